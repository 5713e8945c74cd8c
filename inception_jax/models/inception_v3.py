"""Inception-v2 and Inception-v3 of "Rethinking the Inception Architecture for Computer Vision" (Szegedy et al.
2016), with the switches of the paper's Table 3 ablation.

Table 3 walks from 'Inception-v2' to 'Inception-v3' one change at a time: RMSProp, label smoothing (both
training-recipe changes, see experiments/configs), then

  * factorized 7×7: the first 7×7/2 convolution becomes three 3×3 convolutions (`stem='3x3'`),
  * BN-auxiliary: the fully connected layer of the auxiliary head is batch-normalized too (`aux_bn=True`).

So `inception_v2` here is the v3 body with a single 7×7/2 stem convolution (64 filters, which lands on the
same 147×147×64 grid) and an auxiliary head whose last conv has a bias instead of BN.

The body follows the reference implementations (TF-slim, Keras, torchvision), which keep one 5×5 branch in
the 35×35 modules next to the factorized double-3×3 one. Parameter names follow torchvision's.
"""

from __future__ import annotations


import flax.linen as nn
import jax

from inception_jax.models import layers
from inception_jax.models.layers import Conv, Fork, Pool
from inception_jax.models.registry import ModelOutput, register


def block_a(pool_features: int):
  """35×35 module (Figure 5): 1×1, 5×5, double 3×3 and pooled branches."""
  return (
      (Conv('branch1x1', 64, 1),),
      (Conv('branch5x5_1', 48, 1), Conv('branch5x5_2', 64, 5)),
      (Conv('branch3x3dbl_1', 64, 1), Conv('branch3x3dbl_2', 96, 3), Conv('branch3x3dbl_3', 96, 3)),
      (Pool('avg', 3, 1), Conv('branch_pool', pool_features, 1)),
  )


# 35×35 → 17×17 grid reduction (Figure 10): stride-2 convs in parallel with a stride-2 pool.
BLOCK_B = (
    (Conv('branch3x3', 384, 3, 2, 'VALID'),),
    (Conv('branch3x3dbl_1', 64, 1), Conv('branch3x3dbl_2', 96, 3),
     Conv('branch3x3dbl_3', 96, 3, 2, 'VALID')),
    (Pool('max', 3, 2, 'VALID'),),
)


def block_c(c7: int):
  """17×17 module (Figure 6) with n=7: the 7×7 factorized into 1×7 and 7×1."""
  return (
      (Conv('branch1x1', 192, 1),),
      (Conv('branch7x7_1', c7, 1), Conv('branch7x7_2', c7, (1, 7)), Conv('branch7x7_3', 192, (7, 1))),
      (Conv('branch7x7dbl_1', c7, 1), Conv('branch7x7dbl_2', c7, (7, 1)),
       Conv('branch7x7dbl_3', c7, (1, 7)), Conv('branch7x7dbl_4', c7, (7, 1)),
       Conv('branch7x7dbl_5', 192, (1, 7))),
      (Pool('avg', 3, 1), Conv('branch_pool', 192, 1)),
  )


# 17×17 → 8×8 grid reduction.
BLOCK_D = (
    (Conv('branch3x3_1', 192, 1), Conv('branch3x3_2', 320, 3, 2, 'VALID')),
    (Conv('branch7x7x3_1', 192, 1), Conv('branch7x7x3_2', 192, (1, 7)),
     Conv('branch7x7x3_3', 192, (7, 1)), Conv('branch7x7x3_4', 192, 3, 2, 'VALID')),
    (Pool('max', 3, 2, 'VALID'),),
)

# 8×8 module with expanded filter banks (Figure 7): the 3×3s fork into parallel 1×3 and 3×1.
BLOCK_E = (
    (Conv('branch1x1', 320, 1),),
    (Conv('branch3x3_1', 384, 1),
     Fork(((Conv('branch3x3_2a', 384, (1, 3)),), (Conv('branch3x3_2b', 384, (3, 1)),)))),
    (Conv('branch3x3dbl_1', 448, 1), Conv('branch3x3dbl_2', 384, 3),
     Fork(((Conv('branch3x3dbl_3a', 384, (1, 3)),), (Conv('branch3x3dbl_3b', 384, (3, 1)),)))),
    (Pool('avg', 3, 1), Conv('branch_pool', 192, 1)),
)

BODY = (
    ('Mixed_5b', block_a(32)), ('Mixed_5c', block_a(64)), ('Mixed_5d', block_a(64)),
    ('Mixed_6a', BLOCK_B),
    ('Mixed_6b', block_c(128)), ('Mixed_6c', block_c(160)), ('Mixed_6d', block_c(160)),
    ('Mixed_6e', block_c(192)),
    ('Mixed_7a', BLOCK_D), ('Mixed_7b', BLOCK_E), ('Mixed_7c', BLOCK_E),
)
AUX_AFTER = 'Mixed_6e'  # the auxiliary head sits on top of the last 17×17 module


class InceptionV3(layers.BNConvNet):
  """Inception-v3 (and, with `stem='7x7', aux_bn=False`, the Inception-v2 of Table 3).

  Attributes:
    num_classes: classifier size.
    aux_logits: build the auxiliary head on the 17×17 grid (used only with train=True).
    stem: '3x3' (factorized, v3) or '7x7' (one 7×7/2 conv, v2).
    aux_bn: batch-normalize the auxiliary head's fully connected (5×5 conv) layer: 'BN-auxiliary'.
    dropout_rate: dropout before the classifier (TF-slim keeps 0.8 of the units).
    bn_scale: BN has gamma (torchvision/timm) or not (TF-slim/Keras).
    pool_count_include_pad: average pools count padded zeros (torchvision/timm) or not (TF/Keras).
  """
  stem: str = '3x3'
  aux_bn: bool = True

  MIN_INPUT_SIZE = 75

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'inception_v3' if self.stem == '3x3' else 'inception_v2')
    conv = self.conv_factory()
    x = x.astype(self.dtype or x.dtype)
    if self.stem == '3x3':
      x = conv(32, 3, strides=2, padding='VALID', name='Conv2d_1a_3x3')(x, train)
      x = conv(32, 3, padding='VALID', name='Conv2d_2a_3x3')(x, train)
      x = conv(64, 3, name='Conv2d_2b_3x3')(x, train)
    elif self.stem == '7x7':
      x = conv(64, 7, strides=2, padding='VALID', name='Conv2d_1a_7x7')(x, train)
    else:
      raise ValueError(f"stem must be '3x3' (Inception-v3) or '7x7' (Inception-v2), got {self.stem!r}")
    x = layers.max_pool(x, 3, 2, kernels=self.kernels)
    x = conv(80, 1, padding='VALID', name='Conv2d_3b_1x1')(x, train)
    x = conv(192, 3, padding='VALID', name='Conv2d_4a_3x3')(x, train)
    x = layers.max_pool(x, 3, 2, kernels=self.kernels)

    aux = ()
    for name, branches in BODY:
      x = self.block(layers.Mixed)(branches, conv, self.pool_count_include_pad, self.kernels,
                                   name=name)(x, train)
      # Aux heads are created at init (so the variables exist) but only contribute when training.
      if name == AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
        head = self.aux_head(proj_features=128, conv_features=768, conv_kernel=5, conv_bn=self.aux_bn,
                             name='AuxLogits')
        aux = (head(x, train),)

    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    return ModelOutput(logits=logits, aux_logits=aux if train else ())


@register('inception_v3', input_size=299, min_input_size=InceptionV3.MIN_INPUT_SIZE, min_aux_input_size=107,
          num_aux_heads=1, description='Rethinking Inception-v3 (factorized stem, BN-auxiliary)')
def inception_v3(**kwargs) -> InceptionV3:
  return InceptionV3(**kwargs)


@register('inception_v2', input_size=299, min_input_size=InceptionV3.MIN_INPUT_SIZE, min_aux_input_size=107,
          num_aux_heads=1, description='Rethinking Table 3 baseline: 7×7 stem, auxiliary head without BN')
def inception_v2(**kwargs) -> InceptionV3:
  return InceptionV3(**{'stem': '7x7', 'aux_bn': False, **kwargs})
