"""Importers for PyTorch state dicts: torchvision's `googlenet` and `inception_v3`, timm's `inception_v3`,
`inception_v4`, `inception_resnet_v2` and `legacy_xception`.

A file is read without running code from it: `.safetensors` with the safetensors package, `.pth` / `.pt` /
`.bin` with `torch.load(weights_only=True)`, which refuses pickled objects other than tensors and plain
containers. Each source is our model with the peer's conventions (`overrides`) and a function that names,
for each of our modules, the peer's module: everything else (layouts, BN names, checks) is shared.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Callable

import numpy as np

from inception_jax.convert import core

# Our leaf name -> the suffix of PyTorch's parameter or buffer.
_TORCH_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                'var': 'running_var'}
_TORCH_LAYOUTS = {'conv': 'torch_conv', 'depthwise': 'torch_conv', 'dense': 'torch_dense'}  # of kernels


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The float tensors of a state dict file, as numpy arrays, under their PyTorch names.

  Training checkpoints that wrap the state dict (`{'state_dict': ...}`, `{'model': ...}`) and names
  prefixed by DistributedDataParallel (`module.`) are accepted.
  """
  if not os.path.isfile(path):
    raise core.ConversionError(f'{path}: no such file')
  if path.endswith('.safetensors'):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      state = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
      raise core.ConversionError(f'{path}: not a readable safetensors file (truncated or corrupt?): '
                                 f'{_first_line(e)}') from None
  else:
    state = _torch_load(path)
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise core.ConversionError(f'{path}: holds a {type(state).__name__}, not a state dict')
  out = {}
  for key, value in state.items():
    array = _as_numpy(value)
    if array is not None and array.dtype.kind == 'f':  # num_batches_tracked counters are not weights
      out[key.removeprefix('module.')] = array
  return out


def _torch_load(path: str) -> Any:
  try:
    import torch
  except ImportError:
    raise core.ConversionError(f'{path}: reading PyTorch pickle files needs torch (pip install torch); '
                               '.safetensors files need only the safetensors package') from None
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    detail = _refusal(e)
    raise core.ConversionError(f'{path}: refused: the file holds Python objects other than tensors, and '
                               f'loading them could run code{f" ({detail})" if detail else ""}') from None
  except (RuntimeError, EOFError, OSError, ValueError) as e:
    raise core.ConversionError(f'{path}: not a readable PyTorch file (truncated or corrupt?): '
                               f'{_first_line(e)}') from None


def _as_numpy(value: Any) -> np.ndarray | None:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu()
    return value.float().numpy() if value.is_floating_point() else value.numpy()
  return None


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _refusal(e: Exception) -> str:
  """What torch's restricted unpickler stopped at ('... unsupported GLOBAL posix.system ...'), without the
  advice around it to load the file again with weights_only=False, which would run the code."""
  line = next((line.strip() for line in str(e).splitlines() if 'nsupported' in line), '')
  return line.split('. ')[0].rstrip('.')


# ---------------------------------------------------------------------------------------------------------
# Module names: ours -> the peer's. Our names were chosen to follow the peers', so most differences are in
# how sequences are written (our 'branch1_0' is PyTorch's Sequential 'branch1.0').


def _sequential(part: str) -> str:
  """'branch1_0' -> 'branch1.0' (a step of an nn.Sequential); 'branch1_1a' stays."""
  return re.sub(r'^(branch\d)_(\d)$', r'\1.\2', part)


def inception_v3_module(module: tuple[str, ...], model: Any) -> str:
  """torchvision's and timm's Inception3: the same names except in the auxiliary head."""
  aux = {('AuxLogits', 'proj'): ('AuxLogits', 'conv0'), ('AuxLogits', 'conv'): ('AuxLogits', 'conv1')}
  return '.'.join(aux.get(module[:2], module[:2]) + module[2:])


def googlenet_module(module: tuple[str, ...], model: Any) -> str:
  parts = [_sequential(p) for p in module]
  if parts[0] in ('aux1', 'aux2'):
    parts[1] = {'proj': 'conv', 'fc': 'fc2'}.get(parts[1], parts[1])
  return '.'.join(parts)


def inception_v4_module(module: tuple[str, ...], model: Any) -> str:
  """timm's Inception-v4 keeps stem and body in one nn.Sequential, 'features'."""
  from inception_jax.models import inception_v4
  if module[0] == 'fc':
    return '.'.join(('last_linear',) + module[1:])
  names = [layer.name for layer in inception_v4.INCEPTION_V4_STEM + inception_v4.INCEPTION_V4_BODY]
  inner = list(module[1:])
  # The 8×8 modules name their convs one by one ('branch1_0') except for the pooled branch's Sequential.
  if not module[0].startswith('inception_c') or inner[0] == 'branch3_1':
    inner[0] = _sequential(inner[0])
  return '.'.join([f'features.{names.index(module[0])}'] + inner)


def inception_resnet_v2_module(module: tuple[str, ...], model: Any) -> str:
  """timm's Inception-ResNet-v2: residual stages are nn.Sequentials ('repeat', 'repeat_1', 'repeat_2'), the
  unscaled last block is 'block8', and a block's up-projection is a plain biased 'conv2d'."""
  top, rest = module[0], [_sequential(p) for p in module[1:] if p != 'mixed']
  if rest[:2] == ['conv2d', 'conv']:
    rest = ['conv2d']
  stage = re.fullmatch(r'block(35|17|8)_(\d+)', top)
  if stage:
    kind, index = stage.group(1), int(stage.group(2))
    if kind == '8' and index > model.repeats[2]:
      top = 'block8'
    else:
      top = f'{ {"35": "repeat", "17": "repeat_1", "8": "repeat_2"}[kind]}.{index - 1}'
  elif top == 'fc':
    top = 'classif'
  return '.'.join([top] + rest)


def legacy_xception_module(module: tuple[str, ...], model: Any) -> str:
  """timm's legacy_xception: BNs beside their convs ('bn1' for 'conv1'), a module's separable convs and BNs
  in one nn.Sequential 'rep' (with its ReLUs, which shift the indices), 'skip'/'skipbn' shortcuts."""
  top = module[0]
  if top in ('conv1', 'conv2', 'conv3', 'conv4'):
    if module[1] == 'bn':
      return f'bn{top[-1]}'
    return {('conv',): top, ('conv', 'depthwise'): f'{top}.conv1',
            ('conv', 'pointwise'): f'{top}.pointwise'}[module[1:]]
  if top == 'fc':
    return 'fc'
  if module[1] == 'skip':
    return f'{top}.skip' if module[2] == 'conv' else f'{top}.skipbn'
  sep = int(module[1].removeprefix('sepconv')) - 1
  index = 3 * sep + (0 if top == 'block1' else 1)  # block1 starts without a ReLU
  if module[2] == 'bn':
    return f'{top}.rep.{index + 1}'
  return f'{top}.rep.{index}.' + {'depthwise': 'conv1', 'pointwise': 'pointwise'}[module[3]]


def _googlenet_aux_fc1(key: str, array: np.ndarray) -> np.ndarray:
  """torchvision's aux heads flatten the 128×4×4 map channel-first; ours flatten it channel-last."""
  if re.fullmatch(r'aux[12]\.fc1\.weight', key) and array.ndim == 2 and array.shape[1] == 128 * 16:
    out = array.shape[0]
    return array.reshape(out, 128, 4, 4).transpose(0, 2, 3, 1).reshape(out, 128 * 16)
  return array


@dataclasses.dataclass(frozen=True)
class TorchSource:
  """A PyTorch peer: our model, the options that reproduce its conventions, and its names.

  Attributes:
    name: 'library:architecture'.
    model: our canonical model name.
    overrides: `create_model` options matching the peer (padding, pooling, BN epsilon).
    module_name: (our module path, our model) -> the peer's module name.
    classifier: the peer's classifier weight (its rows give the class count).
    aux_prefix: name prefix of the auxiliary heads' tensors ('' when the peer has none); the heads are
      converted when the file has them.
    fix: (peer name, tensor) -> tensor, for layouts that differ beyond the usual transposes.
  """
  name: str
  model: str
  overrides: dict[str, Any]
  module_name: Callable[[tuple[str, ...], Any], str]
  classifier: str
  aux_prefix: str = ''
  fix: Callable[[str, np.ndarray], np.ndarray] = lambda key, array: array

  def convert(self, path: str) -> core.Pretrained:
    state = read_state_dict(path)
    if self.classifier not in state:
      raise core.ConversionError(f'{path}: no {self.classifier!r} tensor; not a {self.name} state dict')
    num_classes = core.classes_of(state[self.classifier].shape[0])
    aux = bool(self.aux_prefix) and any(k.startswith(self.aux_prefix) for k in state)
    model = core.models.create_model(self.model, num_classes=num_classes, aux_logits=aux, **self.overrides)

    def lookup(leaf: core.Leaf):
      key = f'{self.module_name(leaf.module, model)}.{_TORCH_NAMES[leaf.name]}'
      layout = _TORCH_LAYOUTS.get(leaf.kind, 'flax') if leaf.name == 'kernel' else 'flax'
      return key, None if key not in state else self.fix(key, state[key]), layout

    return core.build(model, source=self.name, model=self.model, overrides=self.overrides, aux_logits=aux,
                      num_classes=num_classes, lookup=lookup, file_keys=set(state), file=path)


# torchvision and timm's Inception-v3 average-pool with the zero padding counted (PyTorch's default).
_V3 = dict(model='inception_v3', overrides={'pool_count_include_pad': True}, module_name=inception_v3_module,
           classifier='fc.weight', aux_prefix='AuxLogits.')

SOURCES = {s.name: s for s in (
    TorchSource('torchvision:inception_v3', **_V3),
    TorchSource('torchvision:googlenet', 'googlenet', {}, googlenet_module, 'fc.weight', 'aux',
                _googlenet_aux_fc1),
    TorchSource('timm:inception_v3', **_V3),
    TorchSource('timm:inception_v4', 'inception_v4', {}, inception_v4_module, 'last_linear.weight'),
    TorchSource('timm:inception_resnet_v2', 'inception_resnet_v2', {}, inception_resnet_v2_module,
                'classif.weight'),
    # legacy_xception is a port of the Keras weights with PyTorch's BN epsilon and max pools padded by one.
    TorchSource('timm:legacy_xception', 'xception', {'bn_epsilon': 1e-5, 'padding_style': 'torch'},
                legacy_xception_module, 'fc.weight'),
)}
