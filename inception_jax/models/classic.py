"""Classic CNN baselines the Inception papers measure themselves against: LeNet-5, AlexNet, VGG and
Network in Network.

LeNet-5 and NiN follow the CNN primer "Dive into Deep Learning" (d2l, chapters 7-8); AlexNet and VGG follow
torchvision (single-tower AlexNet, VGG configurations A and D without BN), so that torchvision weights can be
converted. Variants are data: `VGG_CONFIGS` holds the VGG stages, `nin_blocks` the NiN table.

Flatten order: these models flatten NHWC maps (height, width, channel) before their fully connected layers,
where torchvision flattens NCHW (channel, height, width). A converter of torchvision weights must permute the
rows of the first fully connected kernel accordingly.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax import kernels as kernels_lib
from inception_jax.models import layers
from inception_jax.models.registry import ModelOutput, register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dense(cfg: Any, features: int, name: str, kernel_init: Callable = layers.dense_kernel_init) -> nn.Dense:
  return nn.Dense(features, kernel_init=kernel_init, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)


def _conv(cfg: Any, **kwargs) -> Callable[..., nn.Module]:
  """A plain convolution with bias and activation (these networks predate BatchNorm)."""
  return functools.partial(layers.ConvBN, use_bn=False, kernel_init=cfg.kernel_init, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, kernels=cfg.kernels, **kwargs)


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)  # NHWC order; see the module docstring


# ---------------------------------------------------------------------------------------------------------
# LeNet-5

LENET_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'sigmoid': nn.sigmoid, 'relu': nn.relu, 'tanh': nn.tanh}


class LeNet(nn.Module):
  """LeNet-5 as in d2l §7.6: two 5×5 convolutions with 2×2 average pooling, then FC 120, 84, classes.

  The first fully connected layer takes whatever the last pool leaves (16×5×5 at the 28×28 reference size),
  so its shape depends on the input size, as in the original.

  Attributes:
    activation: 'sigmoid' (the primer's, and LeCun's squashing), 'relu' or 'tanh'.
    kernel_init: Xavier, as the primer initializes it (He-normal suits sigmoid poorly).
  """
  num_classes: int = 10
  aux_logits: bool = False
  activation: str = 'sigmoid'
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.xavier_uniform()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX   # see inception_jax.kernels

  # conv 5×5 (pad 2) → pool 2 → conv 5×5 VALID → pool 2: 12 → 6 → 2 → 1.
  MIN_INPUT_SIZE = 12

  def __post_init__(self):
    if self.activation not in LENET_ACTIVATIONS:
      raise ValueError(f'lenet: activation must be one of {", ".join(map(repr, LENET_ACTIVATIONS))}; '
                       f'got {self.activation!r}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'lenet')
    act = LENET_ACTIVATIONS[self.activation]
    conv = _conv(self, activation=act)
    x = x.astype(self.dtype or x.dtype)
    x = conv(6, 5, padding=2, name='conv1')(x)
    x = layers.avg_pool(x, 2, 2)
    x = conv(16, 5, padding='VALID', name='conv2')(x)
    x = layers.avg_pool(x, 2, 2)
    x = _flatten(x)
    x = act(_dense(self, 120, 'fc1', self.kernel_init)(x))
    x = act(_dense(self, 84, 'fc2', self.kernel_init)(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    return ModelOutput(logits=logits, aux_logits=())


# ---------------------------------------------------------------------------------------------------------
# AlexNet


class AlexNet(nn.Module):
  """torchvision's single-tower AlexNet ('One weird trick' variant: 64/192/384/256/256 filters, no LRN).

  Attributes:
    dropout_rate: dropout before each of the two hidden fully connected layers.
  """
  num_classes: int = 1000
  aux_logits: bool = False
  dropout_rate: float = 0.5
  kernel_init: Callable = layers.conv_kernel_init
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX   # see inception_jax.kernels

  # Three VALID 3×3/2 max pools after the 11×11/4 conv (the adaptive pool accepts any grid).
  MIN_INPUT_SIZE = 63

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'alexnet')
    conv = _conv(self)
    x = x.astype(self.dtype or x.dtype)
    x = conv(64, 11, strides=4, padding=2, name='conv1')(x)
    x = layers.max_pool(x, 3, 2, kernels=self.kernels)
    x = conv(192, 5, padding=2, name='conv2')(x)
    x = layers.max_pool(x, 3, 2, kernels=self.kernels)
    x = conv(384, 3, padding=1, name='conv3')(x)
    x = conv(256, 3, padding=1, name='conv4')(x)
    x = conv(256, 3, padding=1, name='conv5')(x)
    x = layers.max_pool(x, 3, 2, kernels=self.kernels)
    x = _flatten(layers.adaptive_avg_pool(x, 6))
    for i in (1, 2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(_dense(self, 4096, f'fc{i}')(x))
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    return ModelOutput(logits=logits, aux_logits=())


# ---------------------------------------------------------------------------------------------------------
# VGG

# Simonyan & Zisserman's Table 1: 3×3 convolutions per stage; every stage ends in a 2×2/2 max pool.
VGG_CONFIGS = {
    'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),                          # A
    'vgg16': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),    # D
}


class VGG(nn.Module):
  """VGG as in torchvision (no BN): conv stages, adaptive avg pool 7×7, FC 4096 → 4096 → classes.

  Attributes:
    stages: features of the 3×3 convolutions, one tuple per stage (see `VGG_CONFIGS`).
    dropout_rate: dropout after each of the two hidden fully connected layers.
  """
  stages: tuple[tuple[int, ...], ...] = VGG_CONFIGS['vgg16']
  num_classes: int = 1000
  aux_logits: bool = False
  dropout_rate: float = 0.5
  kernel_init: Callable = layers.conv_kernel_init
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX   # see inception_jax.kernels

  # Five 2×2/2 max pools.
  MIN_INPUT_SIZE = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    name = next((k for k, v in VGG_CONFIGS.items() if v == self.stages), 'vgg')
    layers.check_input(x, self.MIN_INPUT_SIZE, name)
    conv = _conv(self, padding=1)
    x = x.astype(self.dtype or x.dtype)
    for s, stage in enumerate(self.stages, start=1):
      for i, features in enumerate(stage, start=1):
        x = conv(features, 3, name=f'block{s}_conv{i}')(x)
      x = layers.max_pool(x, 2, 2, kernels=self.kernels)
    x = _flatten(layers.adaptive_avg_pool(x, 7))
    for i in (1, 2):
      x = nn.relu(_dense(self, 4096, f'fc{i}')(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    return ModelOutput(logits=logits, aux_logits=())


# ---------------------------------------------------------------------------------------------------------
# Network in Network


def nin_blocks(num_classes: int) -> tuple[tuple[int, int, int, layers.Padding], ...]:
  """d2l §8.3's NiN: (features, kernel, stride, padding) of each block's first convolution."""
  return ((96, 11, 4, 'VALID'), (256, 5, 1, 2), (384, 3, 1, 1), (num_classes, 3, 1, 1))


class NiNBlock(nn.Module):
  """A k×k convolution followed by two 1×1 convolutions (the 'mlpconv' layer), each with ReLU."""
  features: int
  kernel_size: int
  strides: int = 1
  padding: layers.Padding = 'VALID'
  conv: Callable[..., nn.Module] = layers.ConvBN

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.features, self.kernel_size, strides=self.strides, padding=self.padding,
                  name='conv')(x)
    x = self.conv(self.features, 1, name='cccp1')(x)
    return self.conv(self.features, 1, name='cccp2')(x)


class NiN(nn.Module):
  """Network in Network (Lin et al. 2014) as in d2l §8.3.

  Three mlpconv blocks with 3×3/2 max pools, dropout, a last mlpconv block with `num_classes` channels and
  global average pooling in place of fully connected layers. As in the primer the last block ends in a ReLU,
  so the logits are non-negative.
  """
  num_classes: int = 1000
  aux_logits: bool = False
  dropout_rate: float = 0.5
  kernel_init: Callable = layers.conv_kernel_init
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.LAX   # see inception_jax.kernels

  # 11×11/4 VALID conv, then three VALID 3×3/2 max pools.
  MIN_INPUT_SIZE = 67

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'nin')
    conv = _conv(self)
    x = x.astype(self.dtype or x.dtype)
    blocks = nin_blocks(self.num_classes)
    for i, (features, kernel, stride, padding) in enumerate(blocks, start=1):
      if i == len(blocks):
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = NiNBlock(features, kernel, stride, padding, conv, name=f'nin{i}')(x)
      if i < len(blocks):
        x = layers.max_pool(x, 3, 2, kernels=self.kernels)
    # The classifier is the last block; logits are computed in float32 like every other model's.
    logits = layers.global_avg_pool(x).astype(jnp.float32)
    return ModelOutput(logits=logits, aux_logits=())


# ---------------------------------------------------------------------------------------------------------


@register('lenet', input_size=28, min_input_size=LeNet.MIN_INPUT_SIZE, mean=(0.0, 0.0, 0.0),
          std=(1.0, 1.0, 1.0), crop_pct=1.0, description='LeNet-5 (d2l): sigmoid convs and avg pools')
def lenet(**kwargs) -> LeNet:
  return LeNet(**kwargs)


@register('alexnet', input_size=224, min_input_size=AlexNet.MIN_INPUT_SIZE, mean=IMAGENET_MEAN,
          std=IMAGENET_STD, description='AlexNet (torchvision single-tower variant)')
def alexnet(**kwargs) -> AlexNet:
  return AlexNet(**kwargs)


@register('vgg11', input_size=224, min_input_size=VGG.MIN_INPUT_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          description='VGG-11 (configuration A, torchvision, no BN)')
def vgg11(**kwargs) -> VGG:
  return VGG(**{'stages': VGG_CONFIGS['vgg11'], **kwargs})


@register('vgg16', input_size=224, min_input_size=VGG.MIN_INPUT_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          description='VGG-16 (configuration D, torchvision, no BN)')
def vgg16(**kwargs) -> VGG:
  return VGG(**{'stages': VGG_CONFIGS['vgg16'], **kwargs})


@register('nin', input_size=224, min_input_size=NiN.MIN_INPUT_SIZE, mean=(0.0, 0.0, 0.0),
          std=(1.0, 1.0, 1.0), crop_pct=1.0, description='Network in Network (d2l): mlpconv blocks, GAP')
def nin(**kwargs) -> NiN:
  return NiN(**kwargs)
