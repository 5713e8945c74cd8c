"""Model registry: canonical names, aliases, per-variant defaults, and the output type every model returns.

A family file registers each variant with `@register(...)` on a small builder; variants are data (the
builder's defaults), not copies of a class.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import flax.linen as nn
import jax

from inception_jax import kernels


@flax.struct.dataclass
class ModelOutput:
  """What every model returns: main logits and one entry per auxiliary head (empty in eval mode)."""
  logits: jax.Array
  aux_logits: tuple[jax.Array, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """Per-variant facts other code relies on (input pipeline, summaries, converters).

  Attributes:
    name: canonical name.
    family: the module file that defines it.
    input_size: the paper's / reference implementation's square input size in pixels.
    min_input_size: smallest square input the network accepts in eval mode.
    min_aux_input_size: smallest input at which the auxiliary heads can run (train=True, aux on).
    num_aux_heads: number of auxiliary classifiers when `aux_logits=True`.
    mean, std: per-channel normalisation of [0, 1] pixels the pretrained peers expect; (0.5, 0.5) is the
      Inception convention of scaling to [-1, 1].
    crop_pct: central-crop fraction used for evaluation.
    description: one line for listings.
  """
  name: str
  family: str
  input_size: int
  min_input_size: int
  min_aux_input_size: int
  num_aux_heads: int
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  crop_pct: float = 0.875
  description: str = ''


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}
ALIASES = {'v1': 'inception_v1', 'v2': 'inception_v2', 'v3': 'inception_v3', 'v4': 'inception_v4'}


def register(name: str, *, input_size: int, min_input_size: int, min_aux_input_size: int | None = None,
             num_aux_heads: int = 0, description: str = '', **info):
  """Decorator registering `builder(**kwargs) -> nn.Module` under `name`."""

  def wrap(builder):
    if name in _BUILDERS:
      raise ValueError(f'model {name!r} is registered twice')
    _BUILDERS[name] = builder
    _INFO[name] = ModelInfo(
        name=name, family=builder.__module__.rsplit('.', 1)[-1], input_size=input_size,
        min_input_size=min_input_size,
        min_aux_input_size=min_input_size if min_aux_input_size is None else min_aux_input_size,
        num_aux_heads=num_aux_heads, description=description, **info)
    return builder

  return wrap


def list_models() -> list[str]:
  """Canonical model names, sorted."""
  return sorted(_BUILDERS)


def resolve_name(name: str) -> str:
  """Canonical name for a name or alias; ValueError listing the valid names otherwise."""
  canonical = ALIASES.get(name, name)
  if canonical not in _BUILDERS:
    aliases = ', '.join(f'{a}->{c}' for a, c in sorted(ALIASES.items()))
    raise ValueError(f'unknown model {name!r}; valid names: {", ".join(list_models())} '
                     f'(aliases: {aliases})')
  return canonical


def model_info(name: str) -> ModelInfo:
  return _INFO[resolve_name(name)]


def create_model(name: str, *, num_classes: int = 1000, aux_logits: bool = True, **overrides) -> nn.Module:
  """Builds a registered model.

  Args:
    name: canonical name or alias (see `list_models`).
    num_classes: size of the classifier(s).
    aux_logits: build the auxiliary heads (they run only with `train=True`). Ignored by models without any.
    **overrides: any field of the model's module (dtype, param_dtype, bn_momentum, dropout_rate, the
      family's ablation switches, ...). Every model has `kernels`: 'auto' (default), 'lax' or 'cpu'
      (`inception_jax.kernels`), which changes how it is computed but not its parameters or results; it
      is resolved here, once, and the model's layers take the resolved `kernels.Kernels` from the model.

  Returns:
    An unbound `flax.linen.Module`; `model.apply(variables, x, train=False)` returns a `ModelOutput`.
  """
  canonical = resolve_name(name)
  if num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes}')
  setting = overrides.get('kernels', 'auto')
  if not isinstance(setting, kernels.Kernels):  # resolved once, here; the layers take the object
    overrides['kernels'] = kernels.get(setting)
  builder = _BUILDERS[canonical]
  try:
    return builder(num_classes=num_classes, aux_logits=aux_logits, **overrides)
  except TypeError as e:
    raise ValueError(f'{canonical}: invalid option ({e})') from None
