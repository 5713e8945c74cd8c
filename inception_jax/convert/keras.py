"""Importers for Keras applications: `InceptionV3`, `Xception` and `InceptionResNetV2`.

Files are read with h5py (nothing in the file is executed): Keras 3's `.keras` archive and `.weights.h5`,
and the legacy `.h5` of tf.keras / Keras 2 / Keras 3's `model.save('x.h5')`, which is what
`keras.applications` downloads. Only a bare `.weights.h5` needs Keras installed (below).

Layers Keras was not given a name for are named by creation order: `conv2d`, `conv2d_1`, ... (Keras 2
started at `conv2d_1`; a process that built other models first continues the count). Those layers are
matched to ours in forward order, which follows the Keras code's creation order; the layers Keras names
explicitly are matched by name.

Keras 3's `.weights.h5` names its entries by position in the model's graph order (`conv2d_7` is the
eighth Conv2D of `model.layers`, whatever its name). The `.keras` archive carries the model's config,
which gives the real names; for a bare `.weights.h5`, Keras (if installed) builds the application to tell
the order.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from typing import Any, Callable

import numpy as np

from inception_jax.convert import core

AUTO = {'conv': 'conv2d', 'bn': 'batch_normalization'}  # Keras' default names, by our module kind
_BN_ROLES = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}


def read_weights_file(path: str, architecture: str | None = None) -> dict[str, dict[str, np.ndarray]]:
  """{layer name: {variable role ('kernel', 'gamma', 'moving_mean', ...): array}} of a Keras file.

  A bare Keras 3 `.weights.h5` needs `architecture` (the `keras.applications` name) and Keras itself to
  tell which layer each of its entries is.
  """
  import h5py
  if not os.path.isfile(path):
    raise core.ConversionError(f'{path}: no such file')
  try:
    config = None
    source = path
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read('config.json'))
        source = io.BytesIO(archive.read('model.weights.h5'))
    with h5py.File(source, 'r') as f:
      if 'layer_names' in f.attrs or 'model_weights' in f:
        return _read_legacy(f['model_weights'] if 'model_weights' in f else f)
      return _read_keras3(f['layers'], config or _layer_list(architecture, path))
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    if isinstance(e, core.ConversionError):
      raise
    raise core.ConversionError(f'{path}: not a readable Keras weights file (truncated or corrupt?): '
                               f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from None


def _layer_list(architecture: str | None, path: str) -> dict:
  """The layer list of `keras.applications.<architecture>`, in the form of a `.keras` archive's config.

  Keras 3 numbers a `.weights.h5`'s entries by position in `model.layers` (graph order, not creation
  order); only Keras can say which layer holds which position. Nothing in the file is executed: Keras
  builds its own application from its code, with random weights, and the arrays still come from h5py.
  """
  try:
    import keras
  except ImportError:
    raise core.ConversionError(
        f'{path}: a Keras 3 .weights.h5 numbers layers by their position in the model, which only Keras '
        "can tell: install keras, or give the .keras file (model.save('model.keras')) or the legacy .h5"
    ) from None
  model = getattr(keras.applications, architecture)(weights=None)
  return {'config': {'layers': [{'class_name': type(layer).__name__, 'config': {'name': layer.name}}
                                for layer in model.layers]}}


def _snake_case(class_name: str) -> str:
  """Keras' file name for a layer class: 'BatchNormalization' -> 'batch_normalization', 'Conv2D' -> 'conv2d'."""
  name = re.sub(r'(.)([A-Z][a-z]+)', r'\1_\2', class_name)
  return re.sub(r'([a-z])([A-Z])', r'\1_\2', name).lower()


def _read_keras3(group, config: dict) -> dict[str, dict[str, np.ndarray]]:
  """Keras 3 stores `layers/<class>_<k>/vars/0, 1, ...`: the k-th layer of that class in the model's layer
  list, variables in the layer's order, no names. The config's layer list gives the real names."""
  seen: dict[str, int] = {}
  out = {}
  for layer in config['config']['layers']:
    base = _snake_case(layer['class_name'])
    key = base if base not in seen else f'{base}_{seen[base]}'
    seen[base] = seen.get(base, 0) + 1
    if key not in group or 'vars' not in group[key] or not len(group[key]['vars']):
      continue
    variables = group[key]['vars']
    arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    out[layer['config']['name']] = dict(zip(_roles(arrays), arrays))
  return out


def _roles(arrays: list[np.ndarray]) -> tuple[str, ...]:
  """Variable roles of a Keras 3 layer from its arrays: BatchNorm (gamma only with scale=True), separable,
  or plain conv / dense."""
  if all(a.ndim == 1 for a in arrays):
    return ('gamma', 'beta', 'moving_mean', 'moving_variance')[4 - len(arrays):]
  if len(arrays) >= 2 and arrays[0].ndim == arrays[1].ndim == 4:
    return ('depthwise_kernel', 'pointwise_kernel', 'bias')[:len(arrays)]
  return ('kernel', 'bias')[:len(arrays)]


def _read_legacy(group) -> dict[str, dict[str, np.ndarray]]:
  """The legacy layout: `NAME/NAME/kernel:0`, listed by the `layer_names` / `weight_names` attributes."""
  out = {}
  for name in group.attrs['layer_names']:
    name = name.decode() if isinstance(name, bytes) else str(name)
    layer = group[name]
    weights = {}
    for weight in layer.attrs.get('weight_names', []):
      weight = weight.decode() if isinstance(weight, bytes) else str(weight)
      weights[weight.split('/')[-1].split(':')[0]] = np.asarray(layer[weight])
    if weights:
      out[name] = weights
  return out


def _role(leaf: core.Leaf) -> tuple[str, str]:
  """The Keras variable role holding `leaf`, and its layout."""
  if leaf.kind == 'bn':
    return _BN_ROLES[leaf.name], 'flax'
  if leaf.name == 'bias':
    return 'bias', 'flax'
  if leaf.kind == 'depthwise':
    return 'depthwise_kernel', 'keras_depthwise'
  if leaf.module[-1] == 'pointwise':  # the 1×1 half of a SeparableConv
    return 'pointwise_kernel', 'flax'
  return 'kernel', 'flax'


def _auto_names(names, base: str) -> list[str]:
  """`base`, `base_1`, `base_2`, ... present in the file, in creation order."""
  numbered = [(0 if m.group(1) is None else int(m.group(1)), n) for n in names
              if (m := re.fullmatch(re.escape(base) + r'(?:_(\d+))?', n))]
  return [n for _, n in sorted(numbered)]


# ---------------------------------------------------------------------------------------------------------
# Layer names: ours -> Keras'. None means "one of Keras' numbered default names".


def inception_v3_layer(module: tuple[str, ...]) -> str | None:
  return 'predictions' if module[0] == 'fc' else None


def inception_resnet_v2_layer(module: tuple[str, ...]) -> str | None:
  top = module[0]
  if top == 'fc':
    return 'predictions'
  if top == 'conv2d_7b':
    return 'conv_7b' if module[1] == 'conv' else 'conv_7b_bn'
  if re.fullmatch(r'block(35|17|8)_\d+', top) and module[1] == 'conv2d':  # the biased up-projection
    return f'{top}_conv'
  return None


def xception_layer(module: tuple[str, ...]) -> str | None:
  """Keras numbers the blocks from the stem ('block1_conv1'); ours from the first module."""
  top, bn = module[0], module[-1] == 'bn'
  if top == 'fc':
    return 'predictions'
  if top in ('conv1', 'conv2'):
    name = f'block1_{top}'
  elif top in ('conv3', 'conv4'):
    name = f'block14_sepconv{int(top[-1]) - 2}'
  elif module[1] == 'skip':  # the projection shortcuts are unnamed
    return None
  else:
    name = f'block{int(top.removeprefix("block")) + 1}_{module[1]}'
  return f'{name}_bn' if bn else name


@dataclasses.dataclass(frozen=True)
class KerasSource:
  """A Keras application: our model, the options that reproduce its conventions, and its layer names.

  Attributes:
    name: 'keras:Architecture'.
    model: our canonical model name.
    overrides: `create_model` options matching Keras (its Inception BNs have no gamma).
    layer_name: our module path -> Keras' layer name, or None for a numbered default name.
  """
  name: str
  model: str
  overrides: dict[str, Any]
  layer_name: Callable[[tuple[str, ...]], str | None]

  def convert(self, path: str) -> core.Pretrained:
    layers = read_weights_file(path, architecture=self.name.split(':', 1)[1])
    if 'kernel' not in layers.get('predictions', {}):
      raise core.ConversionError(f'{path}: no classifier layer \'predictions\'; not a {self.name} file '
                                 'saved with include_top=True')
    num_classes = core.classes_of(layers['predictions']['kernel'].shape[-1])
    module = core.models.create_model(self.model, num_classes=num_classes, aux_logits=False,
                                      **self.overrides)
    leaves = core.layout(module, core.models.model_info(self.model).input_size)
    names = self._names(leaves, layers, path)

    def lookup(leaf: core.Leaf):
      layer = names[leaf.module]
      role, layout = _role(leaf)
      if role not in layers.get(layer, {}):
        return None
      return f'{layer}/{role}', layers[layer][role], layout

    file_keys = {f'{layer}/{role}' for layer, weights in layers.items() for role in weights}
    return core.build(module, source=self.name, model=self.model, overrides=self.overrides,
                      aux_logits=False, num_classes=num_classes, lookup=lookup, file_keys=file_keys,
                      file=path, leaves=leaves)

  def _names(self, leaves: list[core.Leaf], layers: dict, path: str) -> dict[tuple[str, ...], str]:
    """Our module path -> Keras layer name; numbered default names are dealt out in forward order."""
    names, unnamed = {}, {kind: [] for kind in AUTO}
    for leaf in leaves:
      if leaf.module in names or any(leaf.module in v for v in unnamed.values()):
        continue
      name = self.layer_name(leaf.module)
      if name is None:
        unnamed['bn' if leaf.kind == 'bn' else 'conv'].append(leaf.module)
      else:
        names[leaf.module] = name
    for kind, modules in unnamed.items():
      found = _auto_names(layers, AUTO[kind])
      if len(found) != len(modules):
        raise core.ConversionError(
            f'{path}: {len(found)} layers named {AUTO[kind]}, {AUTO[kind]}_1, ... where {self.name} has '
            f'{len(modules)}; is the file for another architecture?')
      names.update(zip(modules, found))
    return names


SOURCES = {s.name: s for s in (
    KerasSource('keras:InceptionV3', 'inception_v3', {'bn_scale': False}, inception_v3_layer),
    KerasSource('keras:Xception', 'xception', {}, xception_layer),
    KerasSource('keras:InceptionResNetV2', 'inception_resnet_v2', {'bn_scale': False},
                inception_resnet_v2_layer),
)}
