"""A run of seconds: LeNet on a small Fashion-MNIST stand-in (see conftest's `fashion_dir`).

In-process tests call `tiny_config(data_dir, **overrides)`; command-line tests pass this file as a config,
`--config=tests/tiny_config.py:DATA_DIR`, as a user passes a config file. `TinyInception` is the
smallest network built of the Inception family's parts, for tests of what those parts do in training
(BatchNorm across devices, dtypes, rematerialisation) that would otherwise compile a whole zoo model.
"""

import flax.linen as nn
import ml_collections

from experiments.configs import base
from inception_jax.models import ModelOutput
from inception_jax.models.inception_v4 import ResidualBlock
from inception_jax.models.layers import BNConvNet, Conv, Mixed, Pool, classifier, global_avg_pool


class TinyInception(BNConvNet):
  """A ConvBN stem, an Inception module (1×1, 3×3 then 1×3, average- and max-pooled branches), a residual
  block, the classifier; each block rematerialised with `remat_blocks`, as in the zoo's models."""
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    conv = self.conv_factory()
    x = conv(8, 3, strides=2, name='stem')(x.astype(self.dtype or x.dtype), train)
    x = self.block(Mixed)(((Conv('a', 4, 1),), (Conv('b', 4, 3), Conv('c', 6, (1, 3))),
                           (Pool('avg', 3, 1), Conv('d', 2, 1)), (Pool('max', 3, 1), Conv('e', 2, 1))),
                          conv, kernels=self.kernels, name='mixed')(x, train)
    x = self.block(ResidualBlock)(((Conv('a', 4, 1),), (Conv('b', 4, 3),)), 0.2, conv, name='res')(x, train)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(global_avg_pool(x))
    return ModelOutput(logits=classifier(self, self.num_classes)(x), aux_logits=())


def tiny_config(data_dir, **overrides):
  c = base.get_config()
  c.model = 'lenet'
  c.model_overrides = ml_collections.ConfigDict({'activation': 'relu'})
  c.dataset = 'fashion_mnist'
  c.data_dir = data_dir
  c.image_size = 28
  c.eval_crop_pct = 1.0
  c.augment.area_range = (1.0, 1.0)
  c.augment.aspect_ratio_range = (1.0, 1.0)
  c.batch_size = 8
  c.eval_batch_size = 8
  c.total_epochs = None
  c.eval_every_epochs = None
  c.total_steps = 4
  c.log_every_steps = 1
  c.optimizer = 'adam'
  c.learning_rate = 1e-3
  c.schedule = 'constant'
  c.clip_norm = 0.0
  c.label_smoothing = 0.0
  c.ema_decay = 0.9
  c.ema_warmup = False
  c.update(overrides)
  return c


def get_config(data_dir=None):
  return tiny_config(data_dir or '')
