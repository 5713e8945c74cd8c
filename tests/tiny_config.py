"""A run of seconds: LeNet on a small Fashion-MNIST stand-in (see conftest's `fashion_dir`).

In-process tests call `tiny_config(data_dir, **overrides)`; command-line tests pass this file as a config,
`--config=tests/tiny_config.py:DATA_DIR`, as a user passes a config file.
"""

import ml_collections

from experiments.configs import base


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
  c.optimizer = 'adamw'
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
