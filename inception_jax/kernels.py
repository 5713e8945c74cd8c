"""The `kernels` switch: how convolutions, max pooling, BatchNorm's gradient and the train step's norms
are computed.

- `lax`: stock `lax.conv_general_dilated`, `lax.reduce_window`, `flax.linen.BatchNorm`, optax's
  `clip_by_global_norm` and one reduction per array: what every backend runs well, and what GPUs and TPUs
  get.
- `cpu`: the formulations of `inception_jax.xla_cpu`, which XLA:CPU runs and compiles faster (the
  benchmark's `--kernels` flag measures the difference), compiled with XLA's own convolutions instead of
  the YNNPACK library's (`compiler_options`).
- `gpu`: `lax`, but a BatchNorm whose normalisation runs in the compute dtype (`inception_jax.xla_gpu`): a
  bfloat16 network's activations stay bfloat16 outside the statistics. A lever for accelerators, measured
  against `lax` by the accelerator check before `auto` may pick it.
- `auto` (the default): `cpu` on the CPU backend, `lax` on any other.

Both compute the same function with the same parameters (tested against each other in float64), so a
checkpoint, a converted weight file or a config moves between them unchanged. `models.create_model`
resolves the setting once into a `Kernels` (`get`), the model hands that object to its layers (a `kernels`
field, as it hands down `dtype`), and they take their operations from it; model code never asks which
backend it runs on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from inception_jax import xla_cpu, xla_gpu

KERNELS = ('auto', 'lax', 'cpu', 'gpu')


def _squared_norms(tree: Any) -> jax.Array:
  """Each leaf's sum of squares (in float32 at least), stacked in `jax.tree.leaves` order."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((0,), jnp.float32)
  return jnp.stack([jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))) for x in leaves])


@dataclasses.dataclass(frozen=True)
class Kernels:
  """One setting's implementations.

  Attributes:
    name: 'lax' or 'cpu'.
    conv_general_dilated: `lax.conv_general_dilated`'s signature (what `flax.linen.Conv` takes).
    max_pool: `(x, window, strides, ((top, bottom), (left, right))) -> y` over NHWC; padding never wins.
    batch_norm: a module with `flax.linen.BatchNorm`'s fields, variables and results.
    squared_norms: a pytree's per-leaf sums of squares, in leaf order (the step's norms and NaN check).
    clip_by_global_norm: optax's transformation of that name, or one computing the same.
    compiler_options: XLA options for every program that runs the model (`jit`), as (name, value) pairs.
  """
  name: str
  conv_general_dilated: Callable[..., jax.Array]
  max_pool: Callable[..., jax.Array]
  batch_norm: type[nn.Module]
  squared_norms: Callable[[Any], jax.Array]
  clip_by_global_norm: Callable[[float], optax.GradientTransformation]
  compiler_options: tuple[tuple[str, str], ...] = ()

  def jit(self, fun: Callable, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)`, compiled with this setting's `compiler_options`."""
    return jax.jit(fun, compiler_options=dict(self.compiler_options) or None, **kwargs)


# The lax max pool is plain lax.reduce_window; xla_cpu's own forward pass is the same function.
LAX = Kernels('lax', lax.conv_general_dilated, xla_cpu.reduce_window_max, nn.BatchNorm, _squared_norms,
              optax.clip_by_global_norm)
# XLA:CPU hands convolutions, matrix products and reductions to the YNNPACK library by default; its own
# convolutions make the embedded default's training step cheaper and no other measured shape slower
# (docs/performance.md). Products and reductions stay with the library, which does them better.
CPU_COMPILER_OPTIONS = (('xla_cpu_experimental_ynn_fusion_type', 'LIBRARY_FUSION_TYPE_DOT,'
                         'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'),)
CPU = Kernels('cpu', xla_cpu.conv_general_dilated, xla_cpu.max_pool, xla_cpu.BatchNorm, xla_cpu.squared_norms,
              xla_cpu.clip_by_global_norm, CPU_COMPILER_OPTIONS)
GPU = dataclasses.replace(LAX, name='gpu', batch_norm=xla_gpu.BatchNorm)
_BY_NAME = {'lax': LAX, 'cpu': CPU, 'gpu': GPU}


def check(kernels: str) -> str:
  """`kernels`, or one clear error naming the valid settings."""
  if kernels not in KERNELS:
    raise ValueError(f"kernels must be 'auto', 'lax', 'cpu' or 'gpu', got {kernels!r}")
  return kernels


def resolve(kernels: str) -> str:
  """'lax', 'cpu' or 'gpu': `auto` becomes `cpu` on the CPU backend (jax's default backend now), `lax`
  elsewhere."""
  if check(kernels) == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'lax'
  return kernels


def get(kernels: str) -> Kernels:
  """The implementations of a setting ('auto' resolved now)."""
  return _BY_NAME[resolve(kernels)]


def of(model: nn.Module) -> Kernels:
  """The setting `model` was built with; `LAX` for a module without the field (one not from the zoo)."""
  return getattr(model, 'kernels', LAX)
