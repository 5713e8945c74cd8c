"""What every importer shares: this project's variables laid out in forward order, the checks that turn a
peer's tensors into them, and the on-disk form of a converted model.

A peer names its tensors its own way and stores them in its own layout (PyTorch: OIHW kernels, (out, in)
dense weights; Keras: HWIO, like Flax). An importer only says, for each of our arrays, which tensor of the
file holds it and in which layout; `assemble` does the rest and fails on the first tensor that is missing
or does not fit, so a file for another architecture is one clear error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import models, xla_cpu


class ConversionError(ValueError):
  """A file that cannot be converted: unreadable, for another architecture, or truncated."""


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One array of a model's variables.

  Attributes:
    collection: 'params' or 'batch_stats'.
    module: path of the Flax module owning it, e.g. ('Mixed_5b', 'branch1x1', 'conv').
    name: 'kernel', 'bias', 'scale', 'mean' or 'var'.
    kind: 'conv', 'depthwise', 'bn' or 'dense' (what the owning module is).
    shape: its shape here.
  """
  collection: str
  module: tuple[str, ...]
  name: str
  kind: str
  shape: tuple[int, ...]

  @property
  def path(self) -> str:
    return '/'.join(self.module + (self.name,))


# How a peer's tensor is laid out, and the permutation that makes it ours. 'torch_conv': (out, in, kh, kw),
# for depthwise (channels, 1, kh, kw); 'torch_dense': (out, in); 'keras_depthwise': (kh, kw, channels, 1);
# 'flax': already ours (Keras' dense and conv kernels, every vector).
LAYOUTS: dict[str, tuple[int, ...] | None] = {
    'flax': None, 'torch_conv': (2, 3, 1, 0), 'torch_dense': (1, 0), 'keras_depthwise': (0, 1, 3, 2)}


def to_ours(array: np.ndarray, layout: str) -> np.ndarray:
  perm = LAYOUTS[layout]
  return array if perm is None or array.ndim != len(perm) else np.transpose(array, perm)


def source_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """Our shape written in the peer's layout (for error messages in the peer's terms)."""
  perm = LAYOUTS[layout]
  if perm is None or len(shape) != len(perm):
    return tuple(shape)
  return tuple(shape[perm.index(i)] for i in range(len(perm)))


_LEAF_ORDER = {'params': ('kernel', 'scale', 'bias'), 'batch_stats': ('mean', 'var')}
_KINDS = {nn.Conv: 'conv', nn.BatchNorm: 'bn', xla_cpu.BatchNorm: 'bn', nn.Dense: 'dense'}


def layout(model: nn.Module, input_size: int) -> list[Leaf]:
  """The model's arrays in forward order (modules in the order they run; kernel before bias).

  The order is read from one abstract forward pass, so importers whose peers name layers by creation order
  (Keras' conv2d, conv2d_1, ...) can count along it. Nothing is allocated.
  """
  order: dict[tuple[str, ...], str] = {}  # module path -> kind, in call order

  def record(next_fun, args, kwargs, context):
    module = context.module
    kind = next((k for cls, k in _KINDS.items() if isinstance(module, cls)), None)
    if context.method_name == '__call__' and kind is not None and module.path not in order:
      depthwise = kind == 'conv' and module.feature_group_count > 1
      order[tuple(module.path)] = 'depthwise' if depthwise else kind
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  with nn.intercept_methods(record):
    variables = jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)
  leaves = []
  for path, kind in order.items():
    for collection, names in _LEAF_ORDER.items():
      node = variables.get(collection, {})
      for key in path:
        node = node.get(key, {})
      leaves += [Leaf(collection, tuple(path), n, kind, tuple(node[n].shape)) for n in names if n in node]
  return leaves


# lookup(leaf) -> (the peer's name for the tensor, the tensor or None when the file lacks it, its layout).
Lookup = Callable[[Leaf], tuple[str, np.ndarray | None, str]]


def assemble(leaves: list[Leaf], lookup: Lookup, file_keys: set[str], *, file: str, what: str,
             num_classes: int) -> dict[str, Any]:
  """`{'params': ..., 'batch_stats': ...}` from a peer's tensors, checked against `leaves`.

  Classifier layers stored with one extra class (TF-slim's 1001: background first) lose class 0. Raises
  ConversionError naming the first tensor that is missing or does not fit, or the first one left over.
  """
  out: dict[str, dict] = {'params': {}, 'batch_stats': {}}
  used = set()
  for leaf in leaves:
    key, array, source_layout = lookup(leaf)
    if array is None:
      raise ConversionError(f'{file}: no tensor {key!r} (for {leaf.path} of {what}); is the file for '
                            'another architecture?')
    used.add(key)
    array = to_ours(np.asarray(array), source_layout)
    if (leaf.kind == 'dense' and leaf.shape[-1] == num_classes and array.shape[:-1] == leaf.shape[:-1]
        and array.shape[-1] == num_classes + 1):
      array = array[..., 1:]  # TF-slim's background class
    if array.shape != leaf.shape:
      raise ConversionError(
          f'{file}: tensor {key!r} has shape {source_shape(array.shape, source_layout)} but {what} needs '
          f'{source_shape(leaf.shape, source_layout)} there (for {leaf.path}); the file is for another '
          'architecture or variant')
    node = out[leaf.collection]
    for k in leaf.module:
      node = node.setdefault(k, {})
    node[leaf.name] = array.astype(np.float32)
  unused = sorted(file_keys - used)
  if unused:
    raise ConversionError(f'{file}: {len(unused)} tensor(s) that {what} has no place for, the first '
                          f'{unused[0]!r}; is the file for another architecture?')
  return out


# ---------------------------------------------------------------------------------------------------------
# The converted model on disk: DIR/model.json says how to build it, DIR/variables holds the arrays (orbax).

MODEL_FILE = 'model.json'
VARIABLES_DIR = 'variables'


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A converted model: how to build it and its variables.

  Attributes:
    model: canonical model name (`models.create_model`).
    num_classes: classifier size.
    aux_logits: whether the auxiliary heads' weights came along.
    overrides: `create_model` options that reproduce the peer's conventions (padding, pooling, BN).
    source: where the weights came from ('timm:inception_v4', ...).
    variables: {'params': ..., 'batch_stats': ...} of numpy arrays.
  """
  model: str
  num_classes: int
  aux_logits: bool
  overrides: dict[str, Any]
  source: str
  variables: dict[str, Any]

  def create_model(self, **overrides) -> nn.Module:
    """The model these weights belong to; `overrides` may set fields that do not change its parameters
    (e.g. `kernels`, `dtype`)."""
    return models.create_model(self.model, num_classes=self.num_classes, aux_logits=self.aux_logits,
                               **{**self.overrides, **overrides})


def save(pretrained: Pretrained, directory: str) -> str:
  """Writes `directory/model.json` and `directory/variables`; refuses a directory that is not empty."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise ConversionError(f'{directory} exists and is not an empty directory; choose a new one '
                          '(nothing was written)')
  os.makedirs(directory, exist_ok=True)
  info = models.model_info(pretrained.model)
  spec = {'model': pretrained.model, 'num_classes': pretrained.num_classes,
          'aux_logits': pretrained.aux_logits, 'overrides': pretrained.overrides,
          'source': pretrained.source, 'input_size': info.input_size, 'mean': info.mean, 'std': info.std,
          'crop_pct': info.crop_pct}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, VARIABLES_DIR), pretrained.variables)
  checkpointer.wait_until_finished()
  # model.json last: a directory with it is complete.
  with open(os.path.join(directory, MODEL_FILE), 'w') as f:
    json.dump(spec, f, indent=2)
  return directory


def load(directory: str) -> Pretrained:
  """Reads what `save` wrote."""
  from inception_jax import checkpoint
  spec_path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(spec_path):
    raise ConversionError(f'{directory}: no {MODEL_FILE} there; expected a directory written by '
                          'python -m experiments.convert')
  with open(spec_path) as f:
    spec = json.load(f)
  variables = checkpoint.read_weights(os.path.join(directory, VARIABLES_DIR))
  return Pretrained(model=spec['model'], num_classes=spec['num_classes'], aux_logits=spec['aux_logits'],
                    overrides=spec['overrides'], source=spec['source'], variables=variables)


def build(module: nn.Module, *, source: str, model: str, overrides: dict[str, Any], aux_logits: bool,
          num_classes: int, lookup: Lookup, file_keys: set[str], file: str,
          leaves: list[Leaf] | None = None) -> Pretrained:
  """Fills `module` (`model` built with the peer's conventions) from the peer's tensors; `leaves` is its
  `layout` when the caller has it already."""
  leaves = leaves or layout(module, models.model_info(model).input_size)
  variables = assemble(leaves, lookup, file_keys, file=file, what=f'{source} ({model})',
                       num_classes=num_classes)
  return Pretrained(model=model, num_classes=num_classes, aux_logits=aux_logits, overrides=overrides,
                    source=source, variables=variables)


def classes_of(classifier_outputs: int) -> int:
  """Class count of a classifier with this many outputs (TF-slim's 1001 include a background class)."""
  return 1000 if classifier_outputs == 1001 else classifier_outputs
