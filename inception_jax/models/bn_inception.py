"""BN-Inception of "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift" (Ioffe & Szegedy 2015), the network of the paper's Figure 5.

Changes to GoogLeNet, as the paper lists them: BatchNorm after every convolution; each 5×5 convolution
replaced by two 3×3 convolutions; three 28×28 modules instead of two; average or max pooling inside the
modules; no pooling layers between modules: modules 3c and 4e reduce the grid with stride-2 convolutions next
to a stride-2 max pool whose output passes through unprojected. No auxiliary classifiers.

The filter numbers are Figure 5's. Its output-size column says 576 channels after 4c and 4d and 1024 after
4e, but the rows' filters add up to 608, 608 and 1056; the Caffe model behind the public BN-Inception
weights (Cadene's `bninception`) keeps the filters and has 608/608/1056 channels, and so does this file.
TF-slim's `inception_v2` instead shrinks the pool projections of 4c/4d to 96 to get 576. Padding is TF 'SAME';
parameter names follow the Caffe layer names.
"""

from __future__ import annotations


import flax.linen as nn
import jax

from inception_jax.models import layers
from inception_jax.models.layers import Conv, Pool
from inception_jax.models.registry import ModelOutput, register


def inception_module(c1: int, c3_reduce: int, c3: int, d3_reduce: int, d3: int, pool: str,
                     pool_proj: int | None, stride: int = 1):
  """A row of Figure 5: 1×1, 1×1→3×3, 1×1→3×3→3×3 and pooled branches, concatenated.

  With `stride=2` the module reduces the grid: no 1×1 branch (#1×1 is 0), the last convolution of each
  3×3 branch has stride 2, and the stride-2 max pool passes through without projection (`pool_proj=None`).
  """
  branches = []
  if c1:
    branches.append((Conv('1x1', c1, 1),))
  branches.append((Conv('3x3_reduce', c3_reduce, 1), Conv('3x3', c3, 3, stride)))
  branches.append((Conv('double_3x3_reduce', d3_reduce, 1), Conv('double_3x3_1', d3, 3),
                   Conv('double_3x3_2', d3, 3, stride)))
  # The stride-1 average pools pad 1 explicitly (the same cells as 'SAME') so that the
  # `pool_count_include_pad` convention applies; `layers.avg_pool` ignores it under 'SAME'.
  pool_branch = (Pool(pool, 3, stride, 1 if pool == 'avg' else 'SAME'),)
  if pool_proj is not None:
    pool_branch += (Conv('pool_proj', pool_proj, 1),)
  branches.append(pool_branch)
  return tuple(branches)


# Figure 5: (#1×1, #3×3 reduce, #3×3, #double 3×3 reduce, #double 3×3, pool, pool proj[, stride]).
BODY = (
    ('inception_3a', inception_module(64, 64, 64, 64, 96, 'avg', 32)),
    ('inception_3b', inception_module(64, 64, 96, 64, 96, 'avg', 64)),
    ('inception_3c', inception_module(0, 128, 160, 64, 96, 'max', None, stride=2)),
    ('inception_4a', inception_module(224, 64, 96, 96, 128, 'avg', 128)),
    ('inception_4b', inception_module(192, 96, 128, 96, 128, 'avg', 128)),
    ('inception_4c', inception_module(160, 128, 160, 128, 160, 'avg', 128)),
    ('inception_4d', inception_module(96, 128, 192, 160, 192, 'avg', 128)),
    ('inception_4e', inception_module(0, 128, 192, 192, 256, 'max', None, stride=2)),
    ('inception_5a', inception_module(352, 192, 320, 160, 224, 'avg', 128)),
    ('inception_5b', inception_module(352, 192, 320, 192, 224, 'max', 128)),
)


class BNInception(layers.BNConvNet):
  """BN-Inception (the paper's 'Inception with Batch Normalization', Figure 5).

  Attributes:
    num_classes: classifier size.
    aux_logits: accepted for a uniform API; this network has no auxiliary classifiers.
    dropout_rate: dropout before the classifier. 0 by default: the paper removes dropout from its
      BN-Inception networks (§4.2.1) because BatchNorm regularizes enough.
    bn_scale: BN has gamma.
    pool_count_include_pad: average pools count padded zeros (the Caffe model / Cadene's port) or not (TF).
  """
  dropout_rate: float = 0.0

  # Found by bisection with jax.eval_shape: with 'SAME' padding every layer accepts any grid.
  MIN_INPUT_SIZE = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    layers.check_input(x, self.MIN_INPUT_SIZE, 'bn_inception')
    conv = self.conv_factory()
    x = x.astype(self.dtype or x.dtype)
    x = conv(64, 7, strides=2, name='conv1_7x7_s2')(x, train)
    x = layers.max_pool(x, 3, 2, 'SAME', kernels=self.kernels)
    x = conv(64, 1, name='conv2_3x3_reduce')(x, train)
    x = conv(192, 3, name='conv2_3x3')(x, train)
    x = layers.max_pool(x, 3, 2, 'SAME', kernels=self.kernels)

    for name, branches in BODY:
      x = self.block(layers.Mixed)(branches, conv, self.pool_count_include_pad, self.kernels,
                                   name=name)(x, train)

    # The paper's 7×7 average pool over the 7×7 grid, for any input size.
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    return ModelOutput(logits=logits)


@register('bn_inception', input_size=224, min_input_size=BNInception.MIN_INPUT_SIZE, num_aux_heads=0,
          description='BN-Inception (Ioffe & Szegedy 2015): BN everywhere, 5×5 → two 3×3, no aux heads')
def bn_inception(**kwargs) -> BNInception:
  return BNInception(**kwargs)
