"""Every training key with its default. Presets copy this and change what their paper says.

Durations are given once, as `*_steps` or `*_epochs` (`inception_jax.train.steps` resolves them).
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Model: any registered name; model_overrides go to create_model.
  c.model = 'inception_v3'
  # Unset (None) overrides keep the model's default; presets add their family's switches here.
  c.model_overrides = ml_collections.ConfigDict({
      'dropout_rate': placeholder(float), 'bn_momentum': placeholder(float),
      'bn_epsilon': placeholder(float), 'bn_scale': placeholder(bool)})
  c.aux_logits = True
  c.num_classes = 0          # 0: the dataset's
  c.init_from = ''           # fine-tune: a training run's workdir or checkpoint (a new head if classes differ)
  c.dtype = 'float32'        # compute dtype; 'bfloat16' keeps params, BN statistics and the loss in float32
  c.bn_per_device = False    # per-device BN statistics (shard_map) instead of global-batch BN

  # Data.
  c.dataset = 'imagenet2012'
  c.data_dir = ''            # '' : the source's default location
  c.holdout_fraction = 0.1   # ImageFolder without val/: fraction of each class held out
  c.image_size = 0           # 0: the model's input size
  c.eval_crop_pct = placeholder(float)  # None: the model's (0.875)
  c.augment = ml_collections.ConfigDict({
      'area_range': (0.08, 1.0), 'aspect_ratio_range': (3 / 4, 4 / 3), 'flip': True,
      'color_distort': False})
  c.batch_size = 256         # global, over all devices and processes
  c.eval_batch_size = 0      # 0: batch_size

  # Duration and cadence.
  c.total_steps = placeholder(int)
  c.total_epochs = placeholder(float)
  c.warmup_steps = placeholder(int)
  c.warmup_epochs = placeholder(float)
  c.log_every_steps = placeholder(int)
  c.log_every_epochs = placeholder(float)
  c.eval_every_steps = placeholder(int)
  c.eval_every_epochs = placeholder(float)
  c.checkpoint_every_steps = placeholder(int)
  c.checkpoint_every_epochs = placeholder(float)
  c.keep_checkpoints = 3
  # ImageNet defaults. Placeholders first, so the command line can set any of them to None (e.g.
  # --config.total_epochs=None --config.total_steps=1000).
  c.total_epochs, c.log_every_steps, c.eval_every_epochs, c.checkpoint_every_steps = 100.0, 100, 1.0, 2000

  # Optimisation.
  c.optimizer = 'rmsprop'    # rmsprop (TF's), sgd, nesterov, adamw
  c.learning_rate = 0.045
  c.lr_reference_batch = placeholder(int)  # set: learning_rate * batch_size / lr_reference_batch
  c.schedule = 'staircase_exponential'     # or cosine, constant
  c.decay_rate = 0.94
  c.decay_epochs = 2.0
  c.momentum = 0.9
  c.rmsprop_decay = 0.9
  c.rmsprop_epsilon = 1.0
  c.adam_b1, c.adam_b2, c.adam_epsilon = 0.9, 0.999, 1e-8
  c.clip_norm = 2.0          # global-norm clipping; 0 turns it off
  c.weight_decay = 4e-5      # L2 on conv/dense kernels (TF-slim's ½·w·Σk²) ...
  c.decoupled_weight_decay = False  # ... or decoupled, applied by the optimizer
  c.label_smoothing = 0.1
  c.aux_weight = 0.4
  c.ema_decay = 0.9999       # Polyak averaging of the weights; 0 turns it off
  c.ema_warmup = True        # TF's num_updates: decay min(ema_decay, (1+step)/(10+step))
  c.seed = 0
  return c


def no_argument(preset: str, arg: str | None) -> None:
  """Presets without variants call this, so `--config=NAME:typo` is an error rather than ignored."""
  if arg:
    raise ValueError(f'the {preset} preset takes no argument, got {arg!r}')
