"""Every training key with its default. Presets copy this and change what their paper says.

Durations are given once, as `*_steps` or `*_epochs` (`inception_jax.train.duration_steps` resolves them).
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
      'bn_epsilon': placeholder(float), 'bn_scale': placeholder(bool),
      'pool_count_include_pad': placeholder(bool)})
  c.aux_logits = True
  c.num_classes = 0          # 0: the dataset's
  c.init_from = ''           # fine-tune: a training run's workdir or checkpoint (a new head if classes differ)
  c.dtype = 'float32'        # compute dtype; 'bfloat16' keeps params, BN statistics and the loss in float32
  c.bn_per_device = False    # per-device BN statistics (shard_map) instead of global-batch BN
  # Activation checkpointing (less memory for more compute): '' off; 'blocks' keeps only each Inception
  # module's (residual block's) input and recomputes its inside in the backward pass; 'dots' keeps the
  # convolution and dense outputs and recomputes BN, activations, pooling and concatenations.
  c.remat = ''
  # How convolutions, max pools, BN's gradient and the step's norms are computed (not what): 'lax' is stock
  # flax/optax/lax, 'cpu' XLA:CPU's faster formulations, 'auto' cpu on the CPU backend and lax elsewhere.
  c.kernels = 'auto'
  # The train step writes the new state into the old state's buffers (donation); False keeps both, which
  # only a measurement of what donation saves wants.
  c.donate_state = True

  # Data.
  c.dataset = 'imagenet2012'
  c.data_dir = ''            # '' : the source's default location
  c.holdout_fraction = 0.1   # ImageFolder without val/: fraction of each class held out
  c.skip_corrupt_images = False  # ImageFolder: leave undecodable files out (one warning) rather than stop
  # tf.data's tuning of the input pipelines as they run: 'on', 'off', or 'auto' (off on the CPU backend,
  # where the pipeline shares the cores with the step; on elsewhere). The batches are the same either way.
  c.input_autotune = 'auto'
  c.train_examples = 0       # > 0: train on the first N training examples only (the same N for every seed)
  c.eval_examples = 0        # > 0: evaluate on the first N evaluation examples only
  c.eval_train = False       # also evaluate on the training examples (no augmentation): eval_train/*
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
  c.optimizer = 'rmsprop'    # rmsprop (TF's), sgd, nesterov, adam, adamw (Adam, decay always decoupled)
  c.learning_rate = 0.045
  c.lr_reference_batch = placeholder(int)  # set: learning_rate * batch_size / lr_reference_batch
  c.schedule = 'staircase_exponential'     # or cosine, constant
  c.decay_rate = 0.94
  c.decay_epochs = 2.0
  # Each update rule's own settings, passed through to it (`optim.create_optimizer`): a new one is a line
  # here, and `--config.optimizer_kwargs.adam.b2=0.99` sets one from the command line.
  c.optimizer_kwargs = {
      'rmsprop': {'decay': 0.9, 'epsilon': 1.0, 'momentum': 0.9},   # TF1's RMSProp: ε inside the root
      'sgd': {'momentum': 0.9},
      'nesterov': {'momentum': 0.9},
      'adam': {'b1': 0.9, 'b2': 0.999, 'eps': 1e-8},
      'adamw': {'b1': 0.9, 'b2': 0.999, 'eps': 1e-8},
  }
  c.clip_norm = 2.0          # global-norm clipping; 0 turns it off
  c.weight_decay = 4e-5      # L2 on conv/dense kernels (TF-slim's ½·w·Σk²) ...
  c.decoupled_weight_decay = False  # ... or decoupled, applied by the optimizer
  c.label_smoothing = 0.1
  c.aux_weight = 0.4
  # > 0: before each evaluation, BN statistics are recomputed at the weights over this many training
  # batches ("precise BN") instead of the running averages; the checkpoint then holds them.
  c.precise_bn_batches = 0
  c.ema_decay = 0.9999       # Polyak averaging of the weights; 0 turns it off
  c.ema_warmup = True        # TF's num_updates: decay min(ema_decay, (1+step)/(10+step))
  # A step whose input, loss or gradients hold a NaN or an infinity changes nothing; the run then stops
  # with an error naming it (at the next log step or checkpoint), or with this goes on and counts them.
  c.skip_nonfinite_steps = False
  # train/l2_params and train/l2_updates, the weights' and the step's update's global norms, logged as
  # train/l2_grads always is; off, the step skips two passes over the weights (docs/performance.md).
  c.log_weight_norms = True
  c.seed = 0
  return c


def no_argument(preset: str, arg: str | None) -> None:
  """Presets without variants call this, so `--config=NAME:typo` is an error rather than ignored."""
  if arg:
    raise ValueError(f'the {preset} preset takes no argument, got {arg!r}')


DURATIONS = ('total', 'warmup', 'log_every', 'eval_every', 'checkpoint_every')


def override(c: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
  """`c` with `changes` ({'dotted.key': value}) applied, as `--config.KEY=VALUE` would: a duration set in
  one unit drops the other (`total_steps` clears `total_epochs`). A key the config lacks is an error,
  except under `model_overrides`, which takes any switch of the model."""
  with c.unlocked():
    for key, value in changes.items():
      *path, leaf = key.split('.')
      node = c
      for part in path:
        node = node[part]
      if leaf not in node and path != ['model_overrides']:
        raise ValueError(f'unknown config key {key!r}')
      node[leaf] = value
      for prefix in DURATIONS:
        for unit, other in (('steps', 'epochs'), ('epochs', 'steps')):
          if key == f'{prefix}_{unit}' and f'{prefix}_{other}' not in changes:
            c[f'{prefix}_{other}'] = None
  return c


def short_run(c: ml_collections.ConfigDict, steps: int, dataset: str = 'fashion_mnist',
              image_size: int | None = None, keep: set[str] = frozenset()) -> ml_collections.ConfigDict:
  """A preset cut down for the study tools (gradient flow, ablation sweeps) on a small machine.

  `steps` steps of batch 32 on `dataset` (the embedded Fashion-MNIST by default) at the smallest input the
  model's auxiliary heads take, whole images (no crops: Fashion-MNIST's 28-pixel images are already
  small), one evaluation at the end. The preset's optimizer, schedule and regularisation stay; its
  learning rate, set for the papers' batch of 256, is scaled linearly to batch 32, its warm-up (if any) is
  cut to a tenth of the run, and two averages are shortened: BN's running statistics use momentum 0.9
  (the papers' 0.9997 averages over ~3,000 steps, so after a few hundred the eval-mode statistics would
  still be their initial values and every row would score chance), and Polyak averaging is off (it would
  only lag the weights, and evaluating both doubles the evaluation time). What such a run measures is not
  the paper's ImageNet number.
  Keys in `keep` (given on the command line) are left as they are.
  """
  from inception_jax import models  # configs stay importable without the package's heavy imports
  info = models.model_info(c.model)
  had_warmup = bool(c.warmup_steps or c.warmup_epochs)
  changes = {
      'dataset': dataset,
      'image_size': image_size or (info.min_aux_input_size if c.aux_logits else max(info.min_input_size, 32)),
      'augment.area_range': (1.0, 1.0), 'eval_crop_pct': 1.0, 'batch_size': 32, 'eval_batch_size': 512,
      'lr_reference_batch': c.lr_reference_batch or 256,
      **{f'{prefix}_{unit}': None for prefix in DURATIONS for unit in ('steps', 'epochs')},
      'total_steps': steps, 'warmup_steps': max(1, steps // 10) if had_warmup else None,
      'log_every_steps': max(1, steps // 10), 'checkpoint_every_steps': steps, 'ema_decay': 0.0,
      'model_overrides.bn_momentum': 0.9}
  with c.unlocked():
    for key, value in changes.items():
      if key in keep:
        continue
      node, _, leaf = key.rpartition('.')
      (c[node] if node else c)[leaf] = value
  return c
