"""Xception of "Xception: Deep Learning with Depthwise Separable Convolutions" (Chollet 2017), with the
switches of the paper's ablations.

The network is a linear stack of depthwise separable convolutions with residual connections: an entry flow
(two plain convolutions, then three strided modules to 128, 256 and 728 channels), a middle flow (eight
identical modules of three separable convolutions at 728 channels) and an exit flow (a strided module to 1024,
then separable convolutions to 1536 and 2048), global average pooling and one fully connected layer. That is
36 convolutional layers (a separable convolution counts as one) in 14 modules.

Switches:
  * `residual=False`: §4.6, the same network without any residual connection (identity or 1×1 projection).
  * `mid_activation`: §4.7, a non-linearity between the depthwise and the pointwise convolution of every
    separable convolution ('relu' or 'elu'; the paper finds none works best). Neither changes the parameters.

Layout and ReLU placement follow Keras `applications.Xception` exactly (its ImageNet weights are the
reference; timm's `legacy_xception` is a port of them): a module starts with a ReLU except the first, whose
input has just been through one; the shortcut reads the module's input before that ReLU; strided modules end
in a 3×3/2 'SAME' max pool. timm pads that pool by one on every side, which differs from 'SAME' on even grids
(74×74 → 37×37); 'SAME' is the default because the Keras weights were trained with it, and
`padding_style='torch'` reproduces timm (with its BN epsilon of 1e-5 that imports its weights exactly).
Submodule names follow timm's (conv1, conv2, block1..block12, conv3, conv4, fc).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import kernels as kernels_lib
from inception_jax.models import layers
from inception_jax.models.registry import ModelOutput, register

MID_ACTIVATIONS: dict[str | None, Callable[[jax.Array], jax.Array] | None] = {
    None: None, 'relu': nn.relu, 'elu': nn.elu}

# One row per module: (output features of each separable conv, stride). A module whose output shape differs
# from its input gets a 1×1 projection shortcut; a strided module ends in a max pool.
ENTRY_FLOW = (((128, 128), 2), ((256, 256), 2), ((728, 728), 2))
MIDDLE_FLOW = (((728, 728, 728), 1),) * 8
EXIT_MODULE = ((728, 1024), 2)  # 'grow_first=False': stays at 728, then widens to 1024
BLOCKS = ENTRY_FLOW + MIDDLE_FLOW + (EXIT_MODULE,)
EXIT_FEATURES = (1536, 2048)
POOL_PADDING = {'same': 'SAME', 'torch': 1}


class SeparableConvBN(nn.Module):
  """Separable convolution (depthwise 3×3, pointwise 1×1, no biases), BatchNorm, optional activation."""
  features: int
  activation: Callable[[jax.Array], jax.Array] | None = None
  mid_activation: Callable[[jax.Array], jax.Array] | None = None
  bn_scale: bool = True
  bn_epsilon: float = layers.INCEPTION_BN_EPSILON
  bn_momentum: float = layers.DEFAULT_BN_MOMENTUM
  kernel_init: Callable = layers.conv_kernel_init
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.SeparableConv(self.features, 3, padding='SAME', mid_activation=self.mid_activation,
                             kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype,
                             kernels=self.kernels, name='conv')(x)
    x = layers.batch_norm(self, train, name='bn')(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


class XceptionBlock(nn.Module):
  """One Xception module: [ReLU → separable conv → BN] × n, a max pool if strided, plus the shortcut.

  Attributes:
    features: output features of each separable convolution.
    strides: 2 ends the module with a 3×3/2 max pool and makes the projection shortcut strided.
    pool_padding: that pool's padding: 'SAME' (Keras) or 1 on every side (timm).
    start_with_relu: False only for the first module (its input is already rectified).
    residual: add the shortcut (identity, or 1×1 conv + BN when the shape changes).
    sep_conv: SeparableConvBN factory carrying the family's BN/dtype/init conventions.
    kernels: how the strided module's max pool is computed (`inception_jax.kernels`).
  """
  features: tuple[int, ...]
  strides: int = 1
  pool_padding: layers.Padding = 'SAME'
  start_with_relu: bool = True
  residual: bool = True
  sep_conv: Callable[..., nn.Module] = SeparableConvBN
  conv: Callable[..., nn.Module] = layers.ConvBN
  kernels: kernels_lib.Kernels = kernels_lib.LAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    shortcut = x
    for i, features in enumerate(self.features):
      if i > 0 or self.start_with_relu:
        x = nn.relu(x)
      x = self.sep_conv(features, name=f'sepconv{i + 1}')(x, train)
    if self.strides != 1:
      x = layers.max_pool(x, 3, self.strides, self.pool_padding, kernels=self.kernels)
    if not self.residual:
      return x
    if self.strides != 1 or shortcut.shape[-1] != x.shape[-1]:
      shortcut = self.conv(x.shape[-1], 1, strides=self.strides, padding='SAME', activation=None,
                           name='skip')(shortcut, train)
    return x + shortcut


class Xception(layers.BNConvNet):
  """Xception (Chollet 2017).

  Attributes:
    num_classes: classifier size.
    aux_logits: accepted for a uniform API; Xception has no auxiliary classifier.
    residual: keep the residual connections (False is §4.6's 'no residual connections' ablation).
    mid_activation: None, 'relu' or 'elu' between depthwise and pointwise convolutions (§4.7).
    dropout_rate: dropout before the classifier (the paper's ImageNet model has none).
    bn_scale: BN has gamma (Keras and timm both do).
    bn_epsilon: Keras' 1e-3 (timm's port uses PyTorch's 1e-5).
    padding_style: 'same' (Keras: strided modules end in a 'SAME' max pool) or 'torch' (timm's
      legacy_xception: padded by one on every side, which differs on even grids).
  """
  aux_logits: bool = False
  residual: bool = True
  mid_activation: str | None = None
  padding_style: str = 'same'
  dropout_rate: float = 0.0

  # Two VALID 3×3 convolutions (the first strided) need 7 pixels; everything after pads 'SAME'.
  MIN_INPUT_SIZE = 7

  def __post_init__(self):
    # Fail at construction (create_model), not at the first forward pass.
    if self.mid_activation not in MID_ACTIVATIONS:
      valid = ', '.join(repr(k) for k in MID_ACTIVATIONS)
      raise ValueError(f'xception: mid_activation must be one of {valid}; got {self.mid_activation!r}')
    if self.padding_style not in POOL_PADDING:
      raise ValueError(f"xception: padding_style must be 'same' (Keras) or 'torch' (timm); "
                       f'got {self.padding_style!r}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'xception')
    conv = self.conv_factory()
    sep_conv = self.conv_factory(SeparableConvBN, mid_activation=MID_ACTIVATIONS[self.mid_activation])
    x = x.astype(self.dtype or x.dtype)

    x = conv(32, 3, strides=2, padding='VALID', name='conv1')(x, train)
    x = conv(64, 3, padding='VALID', name='conv2')(x, train)
    for i, (features, strides) in enumerate(BLOCKS):
      x = self.block(XceptionBlock)(
          features, strides, POOL_PADDING[self.padding_style], start_with_relu=i > 0, residual=self.residual,
          sep_conv=sep_conv, conv=conv, kernels=self.kernels, name=f'block{i + 1}')(x, train)
    for i, features in enumerate(EXIT_FEATURES):
      x = sep_conv(features, activation=nn.relu, name=f'conv{i + 3}')(x, train)

    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    return ModelOutput(logits=logits, aux_logits=())


@register('xception', input_size=299, min_input_size=Xception.MIN_INPUT_SIZE, num_aux_heads=0,
          crop_pct=0.8975, description='Xception (Chollet 2017): depthwise separable convs with residuals')
def xception(**kwargs) -> Xception:
  return Xception(**kwargs)
