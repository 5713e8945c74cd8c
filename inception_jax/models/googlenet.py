"""GoogLeNet (Inception-v1) of "Going Deeper with Convolutions" (Szegedy et al. 2015), and torchvision's
batch-normalized port of it.

Both variants share one module: the nine Inception modules of the paper's Table 1 are data, and five
switches say how a variant builds them.

  * `inception_v1` is the paper's network: biased convolutions without BatchNorm, Caffe's local response
    normalization after the first pool and after the 3×3 stem convolution, true 5×5 branches, TF 'SAME'
    padding (the Caffe model's pads and ceil-mode pools give the same 112/56/28/14/7 grids at 224), and
    two auxiliary classifiers (avgpool 5×5/3, 1×1 conv 128, FC 1024, dropout 0.7, FC).
  * `googlenet` matches torchvision's `googlenet` parameter for parameter: BatchNorm after every
    convolution (eps 1e-3), no LRN, PyTorch padding with ceil-mode pools, a 2×2 last grid reduction,
    auxiliary heads that pool to a fixed 4×4 grid, and - kept for weight compatibility - a 3×3
    convolution in the branch the paper calls '5×5' (pytorch/vision#906).

Table 1 lists 2.7K parameters (34M ops) for the first 7×7 convolution: a depthwise-separable one (depth
multiplier 8, then 1×1 to 64). The Caffe model and torchvision use a dense 7×7 (9.4K, 118M), and so does
this file. Parameter names follow torchvision's: `inception4a/branch2_1/conv` is `inception4a.branch2.1.conv`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from inception_jax.models import layers
from inception_jax.models.layers import Conv, Pool
from inception_jax.models.registry import ModelOutput, register

# Table 1, one row per Inception module: (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj).
MODULES = (
    ('inception3a', (64, 96, 128, 16, 32, 32)),
    ('inception3b', (128, 128, 192, 32, 96, 64)),
    ('inception4a', (192, 96, 208, 16, 48, 64)),
    ('inception4b', (160, 112, 224, 24, 64, 64)),
    ('inception4c', (128, 128, 256, 24, 64, 64)),
    ('inception4d', (112, 144, 288, 32, 64, 64)),
    ('inception4e', (256, 160, 320, 32, 128, 128)),
    ('inception5a', (256, 160, 320, 32, 128, 128)),
    ('inception5b', (384, 192, 384, 48, 128, 128)),
)
# A stride-2 max pool halves the grid before these modules (28 → 14 → 7 at 224).
POOL_BEFORE = {'inception4a': 'maxpool3', 'inception5a': 'maxpool4'}
# The auxiliary classifiers read the outputs of these modules (512 and 528 channels).
AUX_AFTER = {'inception4a': 'aux1', 'inception4d': 'aux2'}

PADDING_STYLES = ('same', 'torch')


def _conv_padding(kernel: int, padding_style: str) -> layers.Padding:
  """'SAME' (TF, the paper) or PyTorch's symmetric kernel // 2 (equal for stride 1, odd kernels)."""
  return 'SAME' if padding_style == 'same' else kernel // 2


def grid_pools(padding_style: str) -> dict[str, Pool]:
  """The four stride-2 max pools of the trunk.

  The paper's are 3×3/2 throughout; torchvision (ported from TF-slim) uses 2×2/2 before the 7×7 stage and
  ceil-mode windows without padding, which land on the same grids as 'SAME' at 224.
  """
  if padding_style == 'same':
    pool = Pool('max', 3, 2, 'SAME')
    return {'maxpool1': pool, 'maxpool2': pool, 'maxpool3': pool, 'maxpool4': pool}
  pool = Pool('max', 3, 2, 0, ceil_mode=True)
  return {'maxpool1': pool, 'maxpool2': pool, 'maxpool3': pool,
          'maxpool4': Pool('max', 2, 2, 0, ceil_mode=True)}


def inception_module(filters: tuple[int, ...], branch3_kernel: int = 5, padding_style: str = 'same'):
  """One Inception module (Figure 2b): 1×1, 1×1→3×3, 1×1→5×5 and 3×3 max pool→1×1, concatenated.

  Args:
    filters: a row of `MODULES`.
    branch3_kernel: 5 as in the paper; 3 in torchvision's port.
    padding_style: 'same' or 'torch' (explicit padding, ceil-mode pool).
  """
  c1, c3_reduce, c3, c5_reduce, c5, pool_proj = filters
  pad = functools.partial(_conv_padding, padding_style=padding_style)
  torch = padding_style == 'torch'
  return (
      (Conv('branch1', c1, 1, 1, pad(1)),),
      (Conv('branch2_0', c3_reduce, 1, 1, pad(1)), Conv('branch2_1', c3, 3, 1, pad(3))),
      (Conv('branch3_0', c5_reduce, 1, 1, pad(1)),
       Conv('branch3_1', c5, branch3_kernel, 1, pad(branch3_kernel))),
      (Pool('max', 3, 1, 1 if torch else 'SAME', ceil_mode=torch),
       Conv('branch4_1', pool_proj, 1, 1, pad(1))),
  )


class GoogLeNet(layers.BNConvNet):
  """GoogLeNet / Inception-v1; `inception_v1` and `googlenet` are two settings of its switches.

  Attributes:
    num_classes: classifier size.
    aux_logits: build the two auxiliary classifiers (after 4a and 4d; used only with train=True).
    use_bn: BatchNorm after every convolution, convolutions without bias (torchvision) or plain biased
      convolutions (the paper).
    lrn: Caffe's local response normalization after the first pool and after the 3×3 stem convolution.
    branch3_kernel: kernel of the module's '5×5' branch: 5 (paper) or 3 (torchvision's quirk).
    padding_style: 'same' (TF) or 'torch' (explicit padding, ceil-mode pools, 2×2 last grid reduction).
    aux_adaptive_pool: None for the paper's aux head (avgpool 5×5/3); 4 for torchvision's, which pools any
      grid to 4×4.
    dropout_rate: dropout before the classifier (0.4 in the paper, 0.2 in torchvision).
    aux_dropout_rate: dropout after the auxiliary heads' FC-1024 layer.
    bn_scale, bn_epsilon, bn_momentum: BatchNorm settings (with `use_bn`).
  """
  use_bn: bool = False
  lrn: bool = True
  branch3_kernel: int = 5
  padding_style: str = 'same'
  aux_adaptive_pool: int | None = None
  dropout_rate: float = 0.4
  aux_dropout_rate: float = 0.7

  # Found by bisection with jax.eval_shape: 'SAME' padding never runs out of grid, so the paper's network
  # takes any input; with torchvision's unpadded ceil-mode pools a 14×14 input leaves maxpool3 a grid
  # smaller than any window starting inside it (PyTorch refuses it too).
  MIN_INPUT_SIZE = {'same': 1, 'torch': 15}

  def _aux_head(self, name: str) -> layers.AuxHead:
    # torchvision flattens the 128×4×4 map in NCHW order before fc1; here it is NHWC, so a weight converter
    # permutes fc1's input rows.
    return self.aux_head(pool_window=5, pool_stride=3, adaptive_pool=self.aux_adaptive_pool, proj_features=128,
                         proj_bn=self.use_bn, hidden_features=1024, dropout_rate=self.aux_dropout_rate,
                         name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ModelOutput:
    if self.padding_style not in PADDING_STYLES:
      raise ValueError(f"padding_style must be 'same' (paper) or 'torch' (torchvision), "
                       f'got {self.padding_style!r}')
    layers.check_input(x, self.MIN_INPUT_SIZE[self.padding_style],
                       'googlenet' if self.padding_style == 'torch' else 'inception_v1')
    conv = self.conv_factory(use_bn=self.use_bn)
    pad = functools.partial(_conv_padding, padding_style=self.padding_style)
    pools = grid_pools(self.padding_style)

    def pool(x, name):
      p = pools[name]
      return layers.max_pool(x, p.window, p.stride, p.padding, p.ceil_mode, self.kernels)

    x = x.astype(self.dtype or x.dtype)
    x = conv(64, 7, strides=2, padding=pad(7), name='conv1')(x, train)
    x = pool(x, 'maxpool1')
    if self.lrn:
      x = layers.local_response_norm(x)
    x = conv(64, 1, padding=pad(1), name='conv2')(x, train)
    x = conv(192, 3, padding=pad(3), name='conv3')(x, train)
    if self.lrn:
      x = layers.local_response_norm(x)
    x = pool(x, 'maxpool2')

    aux = []
    for name, filters in MODULES:
      if name in POOL_BEFORE:
        x = pool(x, POOL_BEFORE[name])
      branches = inception_module(filters, self.branch3_kernel, self.padding_style)
      x = self.block(layers.Mixed)(branches, conv, kernels=self.kernels, name=name)(x, train)
      # Aux heads are created at init (so the variables exist) but only contribute when training.
      if name in AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
        aux.append(self._aux_head(AUX_AFTER[name])(x, train))

    # The paper's 7×7 average pool over the 7×7 grid, for any input size.
    x = layers.global_avg_pool(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    logits = layers.classifier(self, self.num_classes, name='fc')(x)
    # Heads in forward order (aux1, aux2); torchvision's GoogLeNetOutputs lists aux_logits2 first.
    return ModelOutput(logits=logits, aux_logits=tuple(aux) if train else ())


# The paper's aux heads need a 5×5 grid after 4a for their 5×5/3 pool: ceil(n / 16) >= 5.
@register('inception_v1', input_size=224, min_input_size=GoogLeNet.MIN_INPUT_SIZE['same'],
          min_aux_input_size=65, num_aux_heads=2,
          description='GoogLeNet as in the paper: no BN, LRN, true 5×5 branches, FC-1024 aux heads')
def inception_v1(**kwargs) -> GoogLeNet:
  return GoogLeNet(**kwargs)


@register('googlenet', input_size=224, min_input_size=GoogLeNet.MIN_INPUT_SIZE['torch'],
          min_aux_input_size=GoogLeNet.MIN_INPUT_SIZE['torch'], num_aux_heads=2,
          description="torchvision's BN-GoogLeNet (3×3 in the '5×5' branch), weight-compatible")
def googlenet(**kwargs) -> GoogLeNet:
  return GoogLeNet(**{'use_bn': True, 'lrn': False, 'branch3_kernel': 3, 'padding_style': 'torch',
                      'aux_adaptive_pool': 4, 'dropout_rate': 0.2, **kwargs})
