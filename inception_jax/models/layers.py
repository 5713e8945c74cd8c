"""Building blocks shared by every model family.

The Inception papers were implemented in TF (DistBelief, TF-slim, Keras) and later ported to PyTorch
(torchvision, timm). The ports differ in small conventions that change the numbers: 'SAME' vs explicit
padding, ceil-mode pooling, whether an average pool counts padded cells, whether BatchNorm has a scale.
Every block here takes those conventions as arguments, so one model definition can reproduce any peer.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from inception_jax import kernels as kernels_lib

Dtype = Any
# 'SAME' and 'VALID' follow TensorFlow; an int p pads p cells on every side (PyTorch's `padding=p`); a pair
# (ph, pw) pads per axis; explicit ((top, bottom), (left, right)) is passed through.
Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]

# Flax BatchNorm momentum is the weight of the old running value: PyTorch's momentum=0.1 is 0.9 here.
DEFAULT_BN_MOMENTUM = 0.99
INCEPTION_BN_EPSILON = 1e-3

# He-normal (fan-in) init for convolutions followed by ReLU; timm and torchvision's newer models use the
# same family. Presets may swap it for TF-slim's truncated normal.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')
dense_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  a, b = v
  return (int(a), int(b))


def resolve_padding(padding: Padding) -> str | tuple[tuple[int, int], tuple[int, int]]:
  """Turns the accepted padding spellings into what `lax` takes: a string or per-axis (low, high)."""
  if isinstance(padding, str):
    p = padding.upper()
    if p not in ('SAME', 'VALID'):
      raise ValueError(f"padding must be 'SAME', 'VALID', an int or per-axis pairs; got {padding!r}")
    return p
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, int) for p in padding):
    return ((padding[0], padding[0]), (padding[1], padding[1]))
  (t, b), (l, r) = padding
  return ((int(t), int(b)), (int(l), int(r)))


class ConvBN(nn.Module):
  """Convolution, optional BatchNorm, optional activation: the unit every Inception network is built from.

  With `use_bn` the convolution has no bias (BN's offset replaces it), as in TF-slim, Keras and torchvision.
  `bn_scale=False` drops BN's gamma, as Keras' Inception models do (a following ReLU makes it redundant).
  `kernels` (an `inception_jax.kernels.Kernels`, resolved where the model is built) says how the
  convolution and BN are computed, not what.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = 'SAME'
  use_bn: bool = True
  use_bias: bool | None = None
  bn_scale: bool = True
  bn_epsilon: float = INCEPTION_BN_EPSILON
  bn_momentum: float = DEFAULT_BN_MOMENTUM
  activation: Callable[[jax.Array], jax.Array] | None = nn.relu
  feature_group_count: int = 1
  kernel_init: Callable = conv_kernel_init
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    use_bias = (not self.use_bn) if self.use_bias is None else self.use_bias
    x = nn.Conv(
        self.features,
        _pair(self.kernel_size),
        strides=_pair(self.strides),
        padding=resolve_padding(self.padding),
        use_bias=use_bias,
        feature_group_count=self.feature_group_count,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        conv_general_dilated=self.kernels.conv_general_dilated,
        name='conv',
    )(x)
    if self.use_bn:
      x = batch_norm(self, train, name='bn')(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


def batch_norm(cfg: Any, train: bool, name: str = 'bn') -> nn.Module:
  """BatchNorm configured from a module's bn_* and kernels fields. Statistics stay in float32 under any
  compute dtype."""
  return cfg.kernels.batch_norm(
      use_running_average=not train,
      momentum=cfg.bn_momentum,
      epsilon=cfg.bn_epsilon,
      use_scale=cfg.bn_scale,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      name=name,
  )


class BNConvNet(nn.Module):
  """Fields every batch-normalised family shares, and the ConvBN factory that carries them.

  Attributes:
    num_classes: classifier size.
    aux_logits: build the auxiliary heads, where the family has any (they run only with train=True).
    dropout_rate: dropout before the classifier.
    bn_scale: BN has gamma (torchvision/timm) or not (TF-slim/Keras).
    bn_epsilon, bn_momentum: BN settings (Flax momentum: PyTorch's 0.1 is 0.9 here).
    pool_count_include_pad: average pools count padded zeros (PyTorch's default) or not (TF).
    kernel_init: convolution initialiser.
    dtype: compute dtype (None: the input's); param_dtype: parameter dtype.
    remat_blocks: activation checkpointing per block: the backward pass keeps only each block's input
      and recomputes the block's inside from it (`nn.remat`), so training holds one block's activations
      at a time rather than the whole network's, for about one more forward pass of compute.
    kernels: how convolutions, pools and BN are computed: an `inception_jax.kernels.Kernels`, which
      `models.create_model` resolves once from 'auto', 'lax', 'cpu' or 'gpu' and every layer takes from here.
  """
  num_classes: int = 1000
  aux_logits: bool = True
  dropout_rate: float = 0.2
  bn_scale: bool = True
  bn_epsilon: float = INCEPTION_BN_EPSILON
  bn_momentum: float = DEFAULT_BN_MOMENTUM
  pool_count_include_pad: bool = False
  kernel_init: Callable = conv_kernel_init
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  remat_blocks: bool = False
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  def block(self, cls: type[nn.Module]) -> type[nn.Module]:
    """The class of a top-level block (an Inception module, a residual block), rematerialised when
    `remat_blocks` is set. Variables keep their names either way; `train` is the second positional
    argument of every block's `__call__` and stays a Python bool."""
    return nn.remat(cls, static_argnums=(2,)) if self.remat_blocks else cls

  def conv_factory(self, cls: type[nn.Module] | None = None, **overrides) -> Callable[..., nn.Module]:
    """`cls` (default `ConvBN`; any module with its BN, init, dtype and kernels fields) with this
    network's settings."""
    return functools.partial(cls or ConvBN, bn_scale=self.bn_scale, bn_epsilon=self.bn_epsilon,
                             bn_momentum=self.bn_momentum, kernel_init=self.kernel_init, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernels=self.kernels, **overrides)

  def aux_head(self, **fields) -> 'AuxHead':
    """An `AuxHead` for this network's classes, with its BN, init, dtype and kernels settings; `fields`
    give the family's head shape and its name."""
    return self.conv_factory(AuxHead, num_classes=self.num_classes, **fields)()


class SeparableConv(nn.Module):
  """Depthwise k×k then pointwise 1×1, with an optional activation between them (Xception §4.7)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Padding = 'SAME'
  use_bias: bool = False
  mid_activation: Callable[[jax.Array], jax.Array] | None = None
  kernel_init: Callable = conv_kernel_init
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    conv = functools.partial(nn.Conv, use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             conv_general_dilated=self.kernels.conv_general_dilated)
    x = conv(in_features, _pair(self.kernel_size), strides=_pair(self.strides),
             padding=resolve_padding(self.padding), feature_group_count=in_features, name='depthwise')(x)
    if self.mid_activation is not None:
      x = self.mid_activation(x)
    return conv(self.features, (1, 1), name='pointwise')(x)


def _pool_padding(size: int, window: int, stride: int, pad: tuple[int, int],
                  ceil_mode: bool) -> tuple[int, int]:
  """PyTorch's ceil_mode: add right padding so a last partial window is kept, unless it starts in padding."""
  if not ceil_mode:
    return pad
  lo, hi = pad
  span = size + lo + hi - window
  out = -(-span // stride) + 1
  if (out - 1) * stride >= size + lo:
    out -= 1
  return (lo, max(hi, (out - 1) * stride + window - size - lo))


def _explicit_pool_padding(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                           padding: Padding, ceil_mode: bool):
  pad = resolve_padding(padding)
  if isinstance(pad, str):
    if ceil_mode:
      raise ValueError('ceil_mode applies to explicit (PyTorch-style) padding, not to SAME/VALID')
    return pad
  return tuple(_pool_padding(x.shape[1 + i], window[i], strides[i], pad[i], ceil_mode) for i in range(2))


def max_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int] | None = None,
             padding: Padding = 'VALID', ceil_mode: bool = False,
             kernels: kernels_lib.Kernels = kernels_lib.LAX) -> jax.Array:
  """Max pooling over NHWC; padded cells never win (they are -inf). `kernels`: see `inception_jax.kernels`."""
  window = _pair(window)
  strides = window if strides is None else _pair(strides)
  pad = _explicit_pool_padding(x, window, strides, padding, ceil_mode)
  if isinstance(pad, str):
    pad = lax.padtype_to_pads(x.shape[1:3], window, strides, pad)
  return kernels.max_pool(x, window, strides, tuple(tuple(p) for p in pad))


def avg_pool(x: jax.Array, window: int | Sequence[int], strides: int | Sequence[int] | None = None,
             padding: Padding = 'VALID', count_include_pad: bool = False,
             ceil_mode: bool = False) -> jax.Array:
  """Average pooling over NHWC.

  `count_include_pad=False` is TensorFlow's 'SAME' (and timm's Inception-v4) behaviour: the mean is over the
  real cells only. PyTorch's `avg_pool2d` default, used by torchvision's Inception-v3, counts zeros of the
  padding, which matters at the borders when converting its weights. The switch applies to 'SAME' and
  explicit padding alike.
  """
  window = _pair(window)
  strides = window if strides is None else _pair(strides)
  pad = _explicit_pool_padding(x, window, strides, padding, ceil_mode)
  dims, step = (1,) + window + (1,), (1,) + strides + (1,)
  if not isinstance(pad, str):
    pad = ((0, 0),) + tuple(pad) + ((0, 0),)
  total = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, dims, step, pad)
  if count_include_pad or pad == 'VALID':
    return total / math.prod(window)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  counts = lax.reduce_window(ones, np.zeros((), x.dtype), lax.add, dims, step, pad)
  return total / counts


def adaptive_avg_pool(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
  """PyTorch's adaptive_avg_pool2d: bin i spans [floor(i*H/o), ceil((i+1)*H/o)), bins may overlap."""
  oh, ow = _pair(output_size)
  h, w = x.shape[1:3]
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    return avg_pool(x, (h // oh, w // ow))

  def bins(n, o):
    return [(i * n // o, -(-(i + 1) * n // o)) for i in range(o)]

  rows = [jnp.mean(x[:, a:b], axis=1, keepdims=True) for a, b in bins(h, oh)]
  x = jnp.concatenate(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2, keepdims=True) for a, b in bins(w, ow)]
  return jnp.concatenate(cols, axis=2)


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


def local_response_norm(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> jax.Array:
  """Caffe's across-channel LRN (GoogLeNet's): x / (k + alpha/size * sum of x² over `size` channels)^beta."""
  sq = jnp.square(x.astype(jnp.float32))
  half = size // 2
  window_sum = lax.reduce_window(sq, 0.0, lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                 ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
  return (x / jnp.power(k + (alpha / size) * window_sum, beta)).astype(x.dtype)


class AuxHead(nn.Module):
  """Auxiliary classifier attached to an intermediate grid.

  One parametrisation covers the family:
    GoogLeNet (paper):   avgpool 5/3 → 1×1 conv 128 → FC 1024 → ReLU → dropout 0.7 → FC
    torchvision GoogLeNet: adaptive avgpool 4×4 → 1×1 ConvBN 128 → FC 1024 → ReLU → dropout 0.7 → FC
    Inception-v3/v4/IRv2: avgpool 5/3 → 1×1 ConvBN 128 → 5×5 conv 768 ('BN-auxiliary' when it has BN) → FC
  """
  num_classes: int
  pool_window: int = 5
  pool_stride: int = 3
  adaptive_pool: int | None = None   # torchvision GoogLeNet pools to a fixed 4×4 instead
  pool_count_include_pad: bool = False
  proj_features: int = 128
  proj_bn: bool = True
  hidden_features: int | None = None  # GoogLeNet's FC-1024
  dropout_rate: float = 0.0
  conv_features: int | None = None    # v3's 5×5 conv over the whole pooled map
  conv_kernel: int = 5
  conv_bn: bool = True
  bn_scale: bool = True
  bn_epsilon: float = INCEPTION_BN_EPSILON
  bn_momentum: float = DEFAULT_BN_MOMENTUM
  kernel_init: Callable = conv_kernel_init
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  def _conv(self, features, kernel, use_bn, name):
    return ConvBN(features, kernel, padding='VALID', use_bn=use_bn, bn_scale=self.bn_scale,
                  bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
                  kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernels=self.kernels, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.adaptive_pool is not None:
      x = adaptive_avg_pool(x, self.adaptive_pool)
    else:
      if min(x.shape[1:3]) < self.pool_window:
        raise ValueError(f'{self.name}: the auxiliary head needs a grid of at least {self.pool_window}×'
                         f'{self.pool_window}, got {x.shape[1]}×{x.shape[2]}; use a larger input or '
                         'aux_logits=False')
      x = avg_pool(x, self.pool_window, self.pool_stride, 'VALID')
    x = self._conv(self.proj_features, 1, self.proj_bn, 'proj')(x, train)
    if self.conv_features is not None:
      # At the reference input size the 5×5 'conv' spans the whole pooled map: it is the head's fully
      # connected layer. Larger inputs leave a bigger map, averaged as torchvision does.
      # Below the reference size the pooled map is smaller than the kernel; like TF-slim, shrink the
      # kernel to the map so the head still works on small inputs.
      kernel = (min(self.conv_kernel, x.shape[1]), min(self.conv_kernel, x.shape[2]))
      x = self._conv(self.conv_features, kernel, self.conv_bn, 'conv')(x, train)
      x = global_avg_pool(x)
    else:
      x = x.reshape(x.shape[0], -1)
    if self.hidden_features is not None:
      x = nn.Dense(self.hidden_features, kernel_init=dense_kernel_init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name='fc1')(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return classifier(self, self.num_classes, name='fc')(x)


def classifier(cfg: Any, num_classes: int, name: str = 'fc') -> nn.Dense:
  """The final linear layer. Logits are computed in float32 whatever the compute dtype."""
  return nn.Dense(num_classes, kernel_init=dense_kernel_init, dtype=jnp.float32,
                  param_dtype=cfg.param_dtype, name=name)


def check_input(x: jax.Array, min_size: int, model: str) -> None:
  """Raises one clear error for inputs that are not NHWC images of at least `min_size` pixels."""
  if x.ndim != 4:
    raise ValueError(f'{model}: expected an NHWC batch of images (4 dimensions), got shape {x.shape}')
  h, w = x.shape[1:3]
  if min(h, w) < min_size:
    raise ValueError(f'{model}: input {h}×{w} is smaller than the minimum {min_size}×{min_size} '
                     'this architecture accepts')


# ---------------------------------------------------------------------------------------------------------
# Inception modules as data: a module is a tuple of branches run in parallel and concatenated on channels;
# a branch is a chain of Conv / Pool steps and may end in a Fork of parallel tails (Inception-v3's expanded
# 8×8 modules). Every family describes its modules with these three records.


class Conv(NamedTuple):
  name: str
  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: Padding = 'SAME'


class Pool(NamedTuple):
  kind: str  # 'max' or 'avg'
  window: int = 3
  stride: int = 1
  padding: Padding = 'SAME'
  ceil_mode: bool = False


class Fork(NamedTuple):
  tails: tuple[tuple[Conv, ...], ...]


Branch = tuple[Conv | Pool | Fork, ...]


def run_step(step: Conv | Pool | Fork, x: jax.Array, train: bool, conv: Callable[..., nn.Module],
             kernels: kernels_lib.Kernels, pool_count_include_pad: bool) -> jax.Array:
  """One step of a table, inside the compact method of the module that owns it: a ConvBN made by `conv`,
  a pool, or a Fork of parallel tails concatenated on channels."""
  if isinstance(step, Conv):
    return conv(step.features, step.kernel, strides=step.stride, padding=step.padding, name=step.name)(x, train)
  if isinstance(step, Pool):
    if step.kind == 'max':
      return max_pool(x, step.window, step.stride, step.padding, step.ceil_mode, kernels)
    return avg_pool(x, step.window, step.stride, step.padding, pool_count_include_pad, step.ceil_mode)
  return jnp.concatenate([run_chain(tail, x, train, conv, kernels, pool_count_include_pad)
                          for tail in step.tails], axis=-1)


def run_chain(steps: Branch, x: jax.Array, train: bool, *args) -> jax.Array:
  """`run_step` over a chain of steps (the arguments after `train` are `run_step`'s)."""
  for step in steps:
    x = run_step(step, x, train, *args)
  return x


class Mixed(nn.Module):
  """Parallel branches concatenated on the channel axis.

  Attributes:
    branches: the module's table, one tuple of steps per branch.
    conv: the ConvBN factory carrying the family's BN/dtype/init/kernels conventions.
    pool_count_include_pad: average-pool convention (see `avg_pool`).
    kernels: how max pools are computed (the conv factory carries the same).
  """
  branches: tuple[Branch, ...]
  conv: Callable[..., nn.Module] = ConvBN
  pool_count_include_pad: bool = False
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    args = (self.conv, self.kernels, self.pool_count_include_pad)
    return jnp.concatenate([run_chain(b, x, train, *args) for b in self.branches], axis=-1)


def out_features(branches: tuple[Branch, ...], in_features: int) -> int:
  """Channels a Mixed module produces from `in_features` channels (pool-only branches pass them through)."""

  def chain(steps, c):
    for s in steps:
      if isinstance(s, Conv):
        c = s.features
      elif isinstance(s, Fork):
        c = sum(chain(t, c) for t in s.tails)
    return c

  return sum(chain(b, in_features) for b in branches)
