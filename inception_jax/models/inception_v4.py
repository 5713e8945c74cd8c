"""Inception-v4, Inception-ResNet-v1 and Inception-ResNet-v2 of "Inception-v4, Inception-ResNet and the Impact
of Residual Connections on Learning" (Szegedy et al. 2016).

Inception-v4 is a plain Inception network with a deeper stem whose grid reductions run convolutions and
pools side by side (Figure 3), uniform 35×35 / 17×17 / 8×8 modules (Figures 4-6) and two reduction
modules (Figures 7-8). The body follows TF-slim / timm, which match the paper.

The Inception-ResNet networks replace the modules by residual ones: a few cheap branches, concatenated, then
a linear 1×1 convolution back to the trunk's width whose output is scaled down before the addition (§3.3:
0.1-0.3 kept the widest networks from dying early in training). Both variants are the same class; their
layer tables differ.

  * inception_resnet_v1: the paper's Figures 14 (stem), 10, 7 (k, l, m, n = 192, 192, 256, 384), 11, 12
    and 13, with 5 / 10 / 5 residual blocks; no reference implementation exists to count against.
  * inception_resnet_v2: TF-slim / Keras / timm, which released the weights: the Inception-v3-style stem
    with a 35×35 mixed module (Mixed_5b), 10 / 20 / 9 scaled residual blocks instead of the paper's
    5 / 10 / 5, one more 8×8 block without scaling or ReLU, and a 1×1 ConvBN to 1536 channels before
    pooling.
    The paper's own layout (Figure 15) is `create_model('inception_resnet_v2', stem=INCEPTION_V4_STEM,
    repeats=(5, 10, 5), final_linear_block=False, head_features=None)`.

Keras builds its BN without gamma (`bn_scale=False`); its parameter count then equals this one's params plus
batch_stats. Parameter names inside modules follow timm's (`branch1_0` is timm's `branch1.0`); block names are
timm's / TF-slim's lower-cased ('conv2d_1a', 'mixed_6a'), with repeated modules numbered from 1
('inception_b_3', 'block17_12'). Every module, residual blocks included, is its own top-level submodule, so
per-block statistics (gradient flow) see each one.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import jax

from inception_jax.models import layers
from inception_jax.models.layers import Branch, Conv, Fork, Pool
from inception_jax.models.registry import ModelOutput, register


class Block(NamedTuple):
  """A named Inception module: parallel branches concatenated on channels (`layers.Mixed`)."""
  name: str
  branches: tuple[Branch, ...]


# A stem or body is a sequence of these: a named ConvBN, an anonymous pool, or a named Inception module.
Layer = Conv | Pool | Block


def apply_layer(layer: Layer, x: jax.Array, net: layers.BNConvNet, conv: Callable[..., nn.Module],
                train: bool) -> jax.Array:
  """Runs one table entry inside the compact method of `net`: a named Inception module is a top-level
  `layers.Mixed` block, anything else a step of `layers.run_step`."""
  if isinstance(layer, Block):
    mixed = net.block(layers.Mixed)
    return mixed(layer.branches, conv, net.pool_count_include_pad, net.kernels, name=layer.name)(x, train)
  return layers.run_step(layer, x, train, conv, net.kernels, net.pool_count_include_pad)


def _aux_head(m: layers.BNConvNet) -> layers.AuxHead:
  """TF-slim's head on the 17×17 grid: avgpool 5/3 → 1×1 ConvBN 128 → 5×5 ConvBN 768 → FC."""
  return m.aux_head(proj_features=128, conv_features=768, conv_kernel=5, conv_bn=True, name='AuxLogits')


def _head(m: nn.Module, x: jax.Array, train: bool) -> jax.Array:
  x = layers.global_avg_pool(x)
  x = nn.Dropout(m.dropout_rate, deterministic=not train)(x)
  return layers.classifier(m, m.num_classes, name='fc')(x)


# ---------------------------------------------------------------------------------------------------------
# Inception-v4


def reduction_a(k: int, l: int, m: int, n: int) -> tuple[Branch, ...]:
  """35×35 → 17×17 reduction (Figure 7), shared by all three networks with Table 1's filter counts."""
  return (
      (Conv('branch0', n, 3, 2, 'VALID'),),
      (Conv('branch1_0', k, 1), Conv('branch1_1', l, 3), Conv('branch1_2', m, 3, 2, 'VALID')),
      (Pool('max', 3, 2, 'VALID'),),
  )


# Figure 3. The three grid reductions after the first convolutions run in parallel with (or are) pools.
INCEPTION_V4_STEM = (
    Conv('conv2d_1a', 32, 3, 2, 'VALID'),
    Conv('conv2d_2a', 32, 3, 1, 'VALID'),
    Conv('conv2d_2b', 64, 3),
    Block('mixed_3a', ((Pool('max', 3, 2, 'VALID'),), (Conv('conv', 96, 3, 2, 'VALID'),))),
    Block('mixed_4a', (
        (Conv('branch0_0', 64, 1), Conv('branch0_1', 96, 3, 1, 'VALID')),
        (Conv('branch1_0', 64, 1), Conv('branch1_1', 64, (1, 7)), Conv('branch1_2', 64, (7, 1)),
         Conv('branch1_3', 96, 3, 1, 'VALID')),
    )),
    Block('mixed_5a', ((Conv('conv', 192, 3, 2, 'VALID'),), (Pool('max', 3, 2, 'VALID'),))),
)

# Figure 4: 35×35 module.
INCEPTION_A = (
    (Conv('branch0', 96, 1),),
    (Conv('branch1_0', 64, 1), Conv('branch1_1', 96, 3)),
    (Conv('branch2_0', 64, 1), Conv('branch2_1', 96, 3), Conv('branch2_2', 96, 3)),
    (Pool('avg', 3, 1), Conv('branch3_1', 96, 1)),
)

# Figure 5: 17×17 module.
INCEPTION_B = (
    (Conv('branch0', 384, 1),),
    (Conv('branch1_0', 192, 1), Conv('branch1_1', 224, (1, 7)), Conv('branch1_2', 256, (7, 1))),
    (Conv('branch2_0', 192, 1), Conv('branch2_1', 192, (7, 1)), Conv('branch2_2', 224, (1, 7)),
     Conv('branch2_3', 224, (7, 1)), Conv('branch2_4', 256, (1, 7))),
    (Pool('avg', 3, 1), Conv('branch3_1', 128, 1)),
)

# Figure 8: 17×17 → 8×8 reduction.
REDUCTION_B = (
    (Conv('branch0_0', 192, 1), Conv('branch0_1', 192, 3, 2, 'VALID')),
    (Conv('branch1_0', 256, 1), Conv('branch1_1', 256, (1, 7)), Conv('branch1_2', 320, (7, 1)),
     Conv('branch1_3', 320, 3, 2, 'VALID')),
    (Pool('max', 3, 2, 'VALID'),),
)

# Figure 6: 8×8 module; the 3×3s fork into parallel 1×3 and 3×1.
INCEPTION_C = (
    (Conv('branch0', 256, 1),),
    (Conv('branch1_0', 384, 1),
     Fork(((Conv('branch1_1a', 256, (1, 3)),), (Conv('branch1_1b', 256, (3, 1)),)))),
    (Conv('branch2_0', 384, 1), Conv('branch2_1', 448, (3, 1)), Conv('branch2_2', 512, (1, 3)),
     Fork(((Conv('branch2_3a', 256, (1, 3)),), (Conv('branch2_3b', 256, (3, 1)),)))),
    (Pool('avg', 3, 1), Conv('branch3_1', 256, 1)),
)

INCEPTION_V4_BODY = (
    *(Block(f'inception_a_{i}', INCEPTION_A) for i in range(1, 5)),
    Block('reduction_a', reduction_a(k=192, l=224, m=256, n=384)),
    *(Block(f'inception_b_{i}', INCEPTION_B) for i in range(1, 8)),
    Block('reduction_b', REDUCTION_B),
    *(Block(f'inception_c_{i}', INCEPTION_C) for i in range(1, 4)),
)
INCEPTION_V4_AUX_AFTER = 'inception_b_7'  # TF-slim's Mixed_6h, the last 17×17 module


class InceptionV4(layers.BNConvNet):
  """Inception-v4 (Figure 9).

  Attributes:
    num_classes: classifier size.
    aux_logits: build TF-slim's auxiliary head on the 17×17 grid (used only with train=True).
    dropout_rate: dropout before the classifier (the paper keeps 0.8 of the units).
    bn_scale: BN has gamma (timm) or not (TF-slim/Keras).
    pool_count_include_pad: average pools count padded zeros (PyTorch default) or not (TF, timm here).
  """

  MIN_INPUT_SIZE = 75

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'inception_v4')
    conv = self.conv_factory()
    x = x.astype(self.dtype or x.dtype)
    aux = ()
    for layer in INCEPTION_V4_STEM + INCEPTION_V4_BODY:
      x = apply_layer(layer, x, self, conv, train)
      # Aux heads are created at init (so the variables exist) but only contribute when training.
      if layer.name == INCEPTION_V4_AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
        aux = (_aux_head(self)(x, train),)
    logits = _head(self, x, train)
    return ModelOutput(logits=logits, aux_logits=aux if train else ())


# ---------------------------------------------------------------------------------------------------------
# Inception-ResNet


class ResidualBlock(nn.Module):
  """Inception-ResNet module: x + scale · up(concat(branches(x))), then the activation.

  The 1×1 up-projection restores the trunk's width; it is linear, with a bias and without BN, as the paper
  keeps BN off the summations (§3.2) and TF-slim/Keras/timm build it.

  Attributes:
    branches: the module's table (`layers.Mixed`).
    scale: residual scaling (§3.3).
    conv: the ConvBN factory carrying the family's BN/dtype/init conventions.
    activation: applied after the addition; None for IR-v2's last block.
  """
  branches: tuple[Branch, ...]
  scale: float = 1.0
  conv: Callable[..., nn.Module] = layers.ConvBN
  activation: Callable[[jax.Array], jax.Array] | None = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mixed = layers.Mixed(self.branches, self.conv, name='mixed')(x, train)
    up = self.conv(x.shape[-1], 1, use_bn=False, activation=None, name='conv2d')(mixed, train)
    x = x + self.scale * up
    return x if self.activation is None else self.activation(x)


def reduction_b_resnet(p: int, q: int, r: int, s: int) -> tuple[Branch, ...]:
  """17×17 → 8×8 reduction of the Inception-ResNets (Figures 12 and 18): three conv towers and a pool."""
  return (
      (Conv('branch0_0', 256, 1), Conv('branch0_1', p, 3, 2, 'VALID')),
      (Conv('branch1_0', 256, 1), Conv('branch1_1', q, 3, 2, 'VALID')),
      (Conv('branch2_0', 256, 1), Conv('branch2_1', r, 3), Conv('branch2_2', s, 3, 2, 'VALID')),
      (Pool('max', 3, 2, 'VALID'),),
  )


# Inception-ResNet-v1 (paper). Figure 14: stem ending in 35×35×256.
IR_V1_STEM = (
    Conv('conv2d_1a', 32, 3, 2, 'VALID'),
    Conv('conv2d_2a', 32, 3, 1, 'VALID'),
    Conv('conv2d_2b', 64, 3),
    Pool('max', 3, 2, 'VALID'),
    Conv('conv2d_3b', 80, 1),
    Conv('conv2d_4a', 192, 3, 1, 'VALID'),
    Conv('conv2d_4b', 256, 3, 2, 'VALID'),
)
# Figure 10: 35×35 residual module.
IR_V1_BLOCK35 = (
    (Conv('branch0', 32, 1),),
    (Conv('branch1_0', 32, 1), Conv('branch1_1', 32, 3)),
    (Conv('branch2_0', 32, 1), Conv('branch2_1', 32, 3), Conv('branch2_2', 32, 3)),
)
IR_V1_REDUCTION_A = reduction_a(k=192, l=192, m=256, n=384)
# Figure 11: 17×17 residual module.
IR_V1_BLOCK17 = (
    (Conv('branch0', 128, 1),),
    (Conv('branch1_0', 128, 1), Conv('branch1_1', 128, (1, 7)), Conv('branch1_2', 128, (7, 1))),
)
IR_V1_REDUCTION_B = reduction_b_resnet(384, 256, 256, 256)
# Figure 13: 8×8 residual module.
IR_V1_BLOCK8 = (
    (Conv('branch0', 192, 1),),
    (Conv('branch1_0', 192, 1), Conv('branch1_1', 192, (1, 3)), Conv('branch1_2', 192, (3, 1))),
)

# Inception-ResNet-v2 as released (TF-slim/Keras/timm). The stem is Inception-v3's plus a 35×35 module.
IR_V2_STEM = (
    Conv('conv2d_1a', 32, 3, 2, 'VALID'),
    Conv('conv2d_2a', 32, 3, 1, 'VALID'),
    Conv('conv2d_2b', 64, 3),
    Pool('max', 3, 2, 'VALID'),
    Conv('conv2d_3b', 80, 1, 1, 'VALID'),
    Conv('conv2d_4a', 192, 3, 1, 'VALID'),
    Pool('max', 3, 2, 'VALID'),
    Block('mixed_5b', (
        (Conv('branch0', 96, 1),),
        (Conv('branch1_0', 48, 1), Conv('branch1_1', 64, 5)),
        (Conv('branch2_0', 64, 1), Conv('branch2_1', 96, 3), Conv('branch2_2', 96, 3)),
        (Pool('avg', 3, 1), Conv('branch3_1', 64, 1)),
    )),
)
# Figure 16 (with TF-slim's widths): 35×35 residual module.
IR_V2_BLOCK35 = (
    (Conv('branch0', 32, 1),),
    (Conv('branch1_0', 32, 1), Conv('branch1_1', 32, 3)),
    (Conv('branch2_0', 32, 1), Conv('branch2_1', 48, 3), Conv('branch2_2', 64, 3)),
)
IR_V2_REDUCTION_A = reduction_a(k=256, l=256, m=384, n=384)
# Figure 17: 17×17 residual module.
IR_V2_BLOCK17 = (
    (Conv('branch0', 192, 1),),
    (Conv('branch1_0', 128, 1), Conv('branch1_1', 160, (1, 7)), Conv('branch1_2', 192, (7, 1))),
)
IR_V2_REDUCTION_B = reduction_b_resnet(384, 288, 288, 320)
# Figure 19: 8×8 residual module.
IR_V2_BLOCK8 = (
    (Conv('branch0', 192, 1),),
    (Conv('branch1_0', 192, 1), Conv('branch1_1', 224, (1, 3)), Conv('branch1_2', 256, (3, 1))),
)


class InceptionResNet(layers.BNConvNet):
  """Inception-ResNet (Figure 15): stem, residual 35×35 / 17×17 / 8×8 stages joined by reductions.

  Blocks are named 'block35_i', 'mixed_6a', 'block17_i', 'mixed_7a', 'block8_i' (1-based, in order), then
  'conv2d_7b' when `head_features` is set. The defaults are Inception-ResNet-v2 as released.

  Attributes:
    num_classes: classifier size.
    aux_logits: build TF-slim's auxiliary head after the last 17×17 block (used only with train=True).
    stem: layers up to the 35×35 grid.
    block_a, block_b, block_c: branch tables of the 35×35, 17×17 and 8×8 residual modules.
    reduction_a, reduction_b: branch tables of the two grid reductions.
    repeats: number of scaled residual blocks per stage.
    scale_a, scale_b, scale_c: residual scaling of the three stages (§3.3).
    final_linear_block: one more 8×8 block with scale 1 and no activation (TF-slim/Keras/timm IR-v2).
    head_features: width of a 1×1 ConvBN before pooling (IR-v2's 'conv2d_7b'); None for none.
    dropout_rate: dropout before the classifier (the paper keeps 0.8 of the units).
    bn_scale: BN has gamma (timm) or not (TF-slim/Keras).
    pool_count_include_pad: average pools count padded zeros (PyTorch default) or not (TF, timm here).
  """
  stem: tuple[Layer, ...] = IR_V2_STEM
  block_a: tuple[Branch, ...] = IR_V2_BLOCK35
  reduction_a: tuple[Branch, ...] = IR_V2_REDUCTION_A
  block_b: tuple[Branch, ...] = IR_V2_BLOCK17
  reduction_b: tuple[Branch, ...] = IR_V2_REDUCTION_B
  block_c: tuple[Branch, ...] = IR_V2_BLOCK8
  repeats: tuple[int, int, int] = (10, 20, 9)
  scale_a: float = 0.17
  scale_b: float = 0.10
  scale_c: float = 0.20
  final_linear_block: bool = True
  head_features: int | None = 1536

  MIN_INPUT_SIZE = 75

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'inception_resnet')
    conv = self.conv_factory()
    x = x.astype(self.dtype or x.dtype)
    for layer in self.stem:
      x = apply_layer(layer, x, self, conv, train)

    residual, mixed = self.block(ResidualBlock), self.block(layers.Mixed)
    n35, n17, n8 = self.repeats
    for i in range(1, n35 + 1):
      x = residual(self.block_a, self.scale_a, conv, name=f'block35_{i}')(x, train)
    x = mixed(self.reduction_a, conv, self.pool_count_include_pad, self.kernels, name='mixed_6a')(x, train)
    for i in range(1, n17 + 1):
      x = residual(self.block_b, self.scale_b, conv, name=f'block17_{i}')(x, train)
    aux = ()
    # Aux heads are created at init (so the variables exist) but only contribute when training.
    if self.aux_logits and (train or self.is_initializing()):
      aux = (_aux_head(self)(x, train),)
    x = mixed(self.reduction_b, conv, self.pool_count_include_pad, self.kernels, name='mixed_7a')(x, train)
    for i in range(1, n8 + 1):
      x = residual(self.block_c, self.scale_c, conv, name=f'block8_{i}')(x, train)
    if self.final_linear_block:
      x = residual(self.block_c, 1.0, conv, activation=None, name=f'block8_{n8 + 1}')(x, train)
    if self.head_features is not None:
      x = conv(self.head_features, 1, name='conv2d_7b')(x, train)
    logits = _head(self, x, train)
    return ModelOutput(logits=logits, aux_logits=aux if train else ())


@register('inception_v4', input_size=299, min_input_size=InceptionV4.MIN_INPUT_SIZE, min_aux_input_size=107,
          num_aux_heads=1, description='Inception-v4 (Szegedy et al. 2016)')
def inception_v4(**kwargs) -> InceptionV4:
  return InceptionV4(**kwargs)


@register('inception_resnet_v1', input_size=299, min_input_size=InceptionResNet.MIN_INPUT_SIZE,
          min_aux_input_size=107, num_aux_heads=1,
          description='Inception-ResNet-v1 as in the paper (Figures 10-14)')
def inception_resnet_v1(**kwargs) -> InceptionResNet:
  paper = dict(stem=IR_V1_STEM, block_a=IR_V1_BLOCK35, reduction_a=IR_V1_REDUCTION_A,
               block_b=IR_V1_BLOCK17, reduction_b=IR_V1_REDUCTION_B, block_c=IR_V1_BLOCK8,
               repeats=(5, 10, 5), final_linear_block=False, head_features=None)
  return InceptionResNet(**{**paper, **kwargs})


@register('inception_resnet_v2', input_size=299, min_input_size=InceptionResNet.MIN_INPUT_SIZE,
          min_aux_input_size=107, num_aux_heads=1, crop_pct=0.8975,
          description='Inception-ResNet-v2 as released (TF-slim/Keras/timm layout)')
def inception_resnet_v2(**kwargs) -> InceptionResNet:
  return InceptionResNet(**kwargs)
