"""The training loop: a run's model, optimizer and data from its config, the jitted steps
(`inception_jax.step`) driven over the data, evaluation, checkpoints, reports, and what stops a run
(bad input, a NaN, a preemption notice).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from inception_jax import checkpoint, data, kernels, models, optim
from inception_jax import step as step_lib
from inception_jax.reporting import Reporter

PyTree = Any


# --- durations --------------------------------------------------------------------------------------------


def duration_steps(prefix: str, config: ml_collections.ConfigDict, steps_per_epoch: int | None = None,
          default: int | None = None) -> int | None:
  """Resolves `{prefix}_steps` or `{prefix}_epochs` of a config to steps; at most one may be set."""
  given = {k: config.get(f'{prefix}_{k}') for k in ('steps', 'epochs')}
  given = {k: v for k, v in given.items() if v is not None}
  if len(given) > 1:
    raise ValueError(f'set only one of {prefix}_steps and {prefix}_epochs (got both)')
  if 'steps' in given:
    return int(given['steps'])
  if 'epochs' in given:
    if steps_per_epoch is None:
      raise ValueError(f'{prefix}_epochs needs a known epoch length')
    return max(1, int(round(given['epochs'] * steps_per_epoch)))
  return default


# --- model, optimizer, state ----------------------------------------------------------------------------


REMAT_MODES = ('', 'blocks', 'dots')


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}.get(config.dtype)
  if dtype is None:
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
  remat = config.get('remat') or ''
  if remat not in REMAT_MODES:
    raise ValueError(f"remat must be '' (off), 'blocks' or 'dots', got {remat!r}")
  overrides = {k: v for k, v in config.model_overrides.to_dict().items() if v is not None}
  model = models.create_model(config.model, num_classes=num_classes, aux_logits=config.aux_logits,
                              dtype=dtype, kernels=config.kernels, **overrides)
  if remat == 'blocks':
    if not hasattr(model, 'remat_blocks'):
      raise ValueError(f"remat='blocks' needs a model built of Inception modules or residual blocks; "
                       f"{config.model} has none (remat='dots' works for every model)")
    model = model.clone(remat_blocks=True)
  return model


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int,
                    global_batch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  base_lr = config.learning_rate
  if config.get('lr_reference_batch'):
    base_lr = optim.scaled_learning_rate(base_lr, global_batch, config.lr_reference_batch)
  decay_steps = None
  if config.schedule == 'staircase_exponential':
    decay_steps = max(1, int(round(config.decay_epochs * steps_per_epoch)))
  schedule = optim.create_schedule(
      config.schedule, base_lr, total_steps=total_steps,
      warmup_steps=duration_steps('warmup', config, steps_per_epoch, default=0),
      decay_rate=config.get('decay_rate'), decay_steps=decay_steps)
  settings = config.optimizer_kwargs.get(config.optimizer)  # an unknown rule: create_optimizer says so
  tx = optim.create_optimizer(
      config.optimizer, schedule, clip_norm=config.clip_norm or None,
      weight_decay=config.weight_decay, decoupled=config.decoupled_weight_decay, kernels=config.kernels,
      **(settings.to_dict() if settings else {}))
  return tx, schedule


def init_from_checkpoint(state: step_lib.TrainState, path: str, num_classes: int, ema: bool) -> step_lib.TrainState:
  """`state` with the weights of the training checkpoint at `path` (see `checkpoint.read_weights`).

  Arrays the checkpoint lacks (e.g. auxiliary heads it was trained without) keep their fresh
  initialisation, as do classifier layers whose class count differs (a new head); any other difference in
  shape is an error. The optimizer state and the step start afresh.
  """
  loaded = checkpoint.read_weights(path)
  fresh: list[str] = []
  params = _graft(state.params, loaded['params'], num_classes, path, fresh)
  batch_stats = _graft(state.batch_stats, loaded['batch_stats'], num_classes, path, fresh)
  total = len(jax.tree.leaves((state.params, state.batch_stats)))
  if len(fresh) == total:
    raise ValueError(f'init_from {path!r}: none of its arrays belongs to this model '
                     '(a checkpoint of another architecture?)')
  if jax.process_index() == 0:
    print(f'init_from {path}: {total - len(fresh)} of {total} arrays loaded'
          + (f'; freshly initialised: {_summary(fresh)}' if fresh else ''), flush=True)
  copied = functools.partial(jax.tree.map, jnp.copy)  # the step donates its state: no buffer twice in it
  return state.replace(params=params, batch_stats=batch_stats, ema_params=copied(params) if ema else {},
                       ema_batch_stats=copied(batch_stats) if ema else {})


def _summary(names: list[str]) -> str:
  """Array names, with those sharing a last-two-component suffix counted when there are many (a model
  imported without BN scales lacks ~100 '.../bn/scale')."""
  groups: dict[str, list[str]] = {}
  for name in names:
    groups.setdefault('/'.join(name.split('/')[-2:]), []).append(name)
  parts = []
  for suffix, members in groups.items():
    parts += [f'{len(members)} × */{suffix}'] if len(members) > 3 else members
  return ', '.join(parts)


def _graft(target: PyTree, source: PyTree, num_classes: int, path: str, fresh: list[str]) -> PyTree:
  """`target` with each array replaced by `source`'s of the same name and shape (placed like target's)."""
  flat_source = flax.traverse_util.flatten_dict(source, sep='/')
  out = {}
  for name, old in flax.traverse_util.flatten_dict(target, sep='/').items():
    new = flat_source.get(name)
    if new is not None and new.shape == old.shape:
      out[name] = jax.device_put(np.asarray(new, old.dtype), old.sharding)
      continue
    if new is not None and not (old.ndim == new.ndim and old.shape[-1] == num_classes):
      raise ValueError(f'init_from {path!r}: {name} has shape {tuple(new.shape)} there but '
                       f'{tuple(old.shape)} here; only the classifier may differ (in its class count)')
    fresh.append(name)
    out[name] = old
  return flax.traverse_util.unflatten_dict(out, sep='/')


def evaluate(jitted: step_lib.JittedSteps, params, batch_stats, batches: data.EvalBatches) -> dict[str, float]:
  """Exact metrics over the whole split: sums over masked batches, divided by the real example count."""
  sums = None
  for local in batches:
    out = jitted.eval_step(params, batch_stats, jitted.global_batch(local))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = float(sums['count'])
  return {'loss': float(sums['loss']) / n, 'top1': float(sums['top1']) / n, 'top5': float(sums['top5']) / n,
          'count': n}


def precise_batch_stats(jitted: step_lib.JittedSteps, params, batch_stats, batches: Iterator[dict],
                        count: int, rng: jax.Array):
  """BatchNorm statistics recomputed at fixed weights: each layer's batch means and variances averaged
  over `count` training batches ("precise BN"), in place of running averages that also remember older
  weights. `batches` yield local batches as the input pipeline does."""
  sums = None
  for i in range(count):
    stats = jitted.batch_statistics_step(params, batch_stats, jitted.global_batch(next(batches)),
                                         jax.random.fold_in(rng, i))
    sums = stats if sums is None else jax.tree.map(jnp.add, sums, stats)
  return jax.tree.map(lambda total: total / count, sums)


# The last run's model and jitted steps. A run in the same process whose config differs from that run's in
# its seed alone (the seeds and study tools run a condition's seeds one after another) takes them over and
# skips tracing and compiling its steps again: the seed reaches the steps only as their arguments. The model
# (its class and fields) and the functions that build the steps are part of the key, so a model or module
# redefined in between (a notebook's reload) is built afresh.
_last_steps: dict[tuple, step_lib.JittedSteps] = {}


def _model_and_steps(config: ml_collections.ConfigDict, num_classes: int, spec: data.ImageSpec,
                     total_steps: int, steps_per_epoch: int) -> tuple[nn.Module, step_lib.JittedSteps]:
  model = build_model(config, num_classes)
  settings = json.dumps({'config': {**config.to_dict(), 'seed': None}, 'num_classes': num_classes,
                         'spec': repr(spec), 'total_steps': total_steps, 'steps_per_epoch': steps_per_epoch,
                         'kernels': kernels.resolve(config.kernels),
                         'devices': [d.id for d in jax.devices()]}, sort_keys=True, default=repr)
  key = (settings, model, step_lib.JittedSteps, optim.create_optimizer, optim.create_schedule)
  if key not in _last_steps:
    tx, schedule = build_optimizer(config, total_steps, steps_per_epoch, config.batch_size)
    _last_steps.clear()
    _last_steps[key] = step_lib.JittedSteps(model, tx, schedule, config, spec=spec)
  return model, _last_steps[key]


# --- the loop -----------------------------------------------------------------------------------------------


class Preempted(Exception):
  """Training stopped at a preemption notice (SIGTERM) after writing a checkpoint; the same command
  resumes it."""


class PreemptionNotice:
  """Turns SIGTERM into a request to stop at a step boundary.

  Alone, a signal handler sets a flag. With several processes, JAX's preemption service (started by
  `jax.distributed.initialize`) catches the signal and picks a step that every process stops at, since a
  process that stopped alone would leave the others waiting in a collective.
  """

  def __init__(self):
    self.received = False
    self._shared = jax.process_count() > 1
    self._previous = None
    if not self._shared and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.received = True

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` (call it after every step)."""
    if self._shared:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def check_nonfinite(state: step_lib.TrainState, skip: bool, last_checkpoint: int | None) -> int:
  """The number of steps so far with a NaN or infinity in their input, loss or gradients; without `skip`
  any is an error naming the first. Input is a `ValueError` (bad data), the rest `FloatingPointError`."""
  record = step_lib.NonFinite(*(int(v) for v in jax.device_get(state.nonfinite)))
  if record.count == 0 or skip:
    return record.count
  quantity = step_lib.nonfinite_quantities(state.params)[record.first_quantity]
  others = f' (and {record.quantities - 1} more quantities)' if record.quantities > 1 else ''
  kept = (f'the newest checkpoint, step {last_checkpoint}, is from before it' if last_checkpoint
          else 'no checkpoint was written')
  error = ValueError if quantity == 'input images' else FloatingPointError
  raise error(f'non-finite {quantity}{others} at step {record.first_step + 1}; the run stopped and saved nothing from that '
              f'step on: {kept}. '
              '--config.skip_nonfinite_steps=True skips such steps instead')


def check_workdir(workdir: str) -> None:
  """Fails before any work when the workdir cannot hold a run (a file there, no permission)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'workdir {workdir!r} exists and is not a directory')
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test'):
      pass
  except OSError as e:
    raise ValueError(f'workdir {workdir!r} is not writable ({e.strerror or e}); give a directory this '
                     'user can create files in') from None


def check_free_space(workdir: str, state: step_lib.TrainState) -> None:
  """Fails before the first step when the workdir's disk cannot hold two checkpoints (the newest and the
  one being written)."""
  need = 2 * sum(x.nbytes for x in jax.tree.leaves(state))
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise ValueError(f'workdir {workdir!r}: {free / 2**20:,.0f} MiB free on its disk, but two checkpoints '
                     f'of this run take {need / 2**20:,.0f} MiB; free some space or choose another workdir')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       make_probe: Callable[[nn.Module, data.ImageSpec],
                                            Callable[[int, step_lib.TrainState, dict], None]] | None = None
                       ) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and returns the final eval metrics.

  `make_probe(model, spec)`, if given, returns `probe(step, state, batch)`, which sees the state and the
  global batch (as the input pipeline gives it; `spec` normalises it) before every training step (`step`
  updates done); the gradient-flow study measures there.
  `config` itself is left as it was (what the run resolved, e.g. the image size, is in its config.json).

  With `config.dataset='synthetic'` every step gets one fixed random batch made on the devices: the loop
  and the step alone, for throughput; such a run has no evaluation.
  """
  config = copy.deepcopy(config)
  check_workdir(workdir)
  process_count = jax.process_count()
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key] or config.batch_size
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{key} must be a positive integer, got {config[key]!r}')
    if value % jax.device_count():
      raise ValueError(f'{key} {value} is not divisible by the {jax.device_count()} devices')
  if not isinstance(config.precise_bn_batches, int) or config.precise_bn_batches < 0:
    raise ValueError(f'precise_bn_batches must be 0 (off) or a positive number of batches, '
                     f'got {config.precise_bn_batches!r}')
  autotune = data.input_autotune(config.input_autotune)
  local_batch = config.batch_size // process_count
  eval_local_batch = (config.eval_batch_size or config.batch_size) // process_count

  synthetic = config.dataset == 'synthetic'
  if synthetic:
    source, num_classes = None, config.num_classes or data.SYNTHETIC_CLASSES
    train_size = data.SYNTHETIC_EPOCH
  else:
    source = data.create_source(config.dataset, config.data_dir or None,
                                holdout_fraction=config.holdout_fraction,
                                skip_corrupt_images=config.skip_corrupt_images)
    for split in ('train', 'eval'):
      if config.get(f'{split}_examples'):
        source = data.subset(source, split, config[f'{split}_examples'])
    num_classes = config.num_classes or source.num_classes
    data.check_num_classes(source, num_classes)
    train_size = source.split_sizes['train']
  info = models.model_info(config.model)
  spec = data.ImageSpec.for_model(info, config.image_size, config.eval_crop_pct)
  with config.unlocked():
    config.image_size = spec.size

  steps_per_epoch = train_size // config.batch_size
  total_steps = duration_steps('total', config, steps_per_epoch)
  if not total_steps:
    raise ValueError('set total_steps or total_epochs')
  log_every = duration_steps('log_every', config, steps_per_epoch, default=50)
  eval_every = duration_steps('eval_every', config, steps_per_epoch, default=total_steps)
  checkpoint_every = duration_steps('checkpoint_every', config, steps_per_epoch, default=total_steps)

  model, jitted = _model_and_steps(config, num_classes, spec, total_steps, steps_per_epoch)
  probe = make_probe(model, spec) if make_probe else None
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = jitted.init(init_rng)

  check_free_space(workdir, state)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  state, start = ckpt.restore_newest(state)
  start = start or 0
  if start:
    print(f'resumed from step {start} in {ckpt.directory}', flush=True)
  elif config.init_from:
    state = init_from_checkpoint(state, config.init_from, num_classes, ema=bool(config.ema_decay))

  reporter = Reporter(workdir, total_steps, config.batch_size)
  reporter.write_config(workdir, config.to_dict())
  if synthetic:
    train_iter = data.synthetic_batches(spec, config.batch_size, num_classes, seed=config.seed,
                                        sharding=jitted.sharded)
    eval_data = train_eval_data = None
  else:
    augment = data.TrainAugment(area_range=tuple(config.augment.area_range),
                                aspect_ratio_range=tuple(config.augment.aspect_ratio_range),
                                flip=config.augment.flip, color_distort=config.augment.color_distort)
    # Batches are put on the devices two steps ahead, so the copy overlaps the step before.
    train_iter = data.prefetch_to_devices(
        data.train_batches(source, spec, local_batch, seed=config.seed, start_step=start, augment=augment,
                           autotune=autotune),
        jitted.global_batch)
    eval_data = data.eval_batches(source, spec, eval_local_batch, autotune=autotune)
    train_eval_data = (data.eval_batches(source, spec, eval_local_batch, split='train', autotune=autotune)
                       if config.get('eval_train') else None)

  def with_precise_bn(state):
    """The state with its BN statistics recomputed at its weights over the first `precise_bn_batches`
    batches of the run's own training stream (its seed, its augmentation)."""
    if not config.precise_bn_batches or eval_data is None or not jax.tree.leaves(state.batch_stats):
      return state
    bn_rng = jax.random.fold_in(rng, 2)  # (init_rng and step_rng are its split)
    stream = data.train_batches(source, spec, local_batch, seed=config.seed, augment=augment, autotune=autotune)
    batches = [next(stream) for _ in range(config.precise_bn_batches)]  # read once, for both weight sets

    def recompute(params, batch_stats):
      return precise_batch_stats(jitted, params, batch_stats, iter(batches), len(batches), bn_rng)

    state = state.replace(batch_stats=recompute(state.params, state.batch_stats))
    if config.ema_decay:
      state = state.replace(ema_batch_stats=recompute(state.ema_params, state.ema_batch_stats))
    return state

  def run_eval(step):
    if eval_data is None:
      print(f'step {step}: no evaluation of synthetic data', flush=True)
      return {}
    results = {}
    weights = [('eval', state.params, state.batch_stats)]
    if config.ema_decay:
      weights.append(('eval_ema', state.ema_params, state.ema_batch_stats))
    for prefix, params, batch_stats in weights:
      m = evaluate(jitted, params, batch_stats, eval_data)
      results.update({f'{prefix}/{k}': v for k, v in m.items()})
    if train_eval_data is not None:  # the raw weights on the training examples: the train-test gap
      m = evaluate(jitted, state.params, state.batch_stats, train_eval_data)
      results.update({f'eval_train/{k}': v for k, v in m.items()})
    reporter.scalars(step, results)
    print(f'step {step}: ' + '  '.join(f'{k} {v:.4f}' for k, v in results.items()), flush=True)
    return results

  results = {}
  reporter.start(start)
  notice = PreemptionNotice()
  skip, skipped = config.skip_nonfinite_steps, 0
  last_checkpoint = start or None
  window_start, window_step, input_wait, window = time.perf_counter(), start, 0.0, None
  try:
    for step in range(start + 1, total_steps + 1):
      waiting = time.perf_counter()
      batch = next(train_iter)
      input_wait += time.perf_counter() - waiting
      if probe is not None:
        probe(step - 1, state, batch)
      state, metrics = jitted.train_step(state, batch, step_rng)
      window = step_lib.add_to_window(window, metrics)
      logs, saves = step % log_every == 0 or step == total_steps, step % checkpoint_every == 0
      if logs or saves:  # nothing non-finite is logged or saved unnoticed
        count = check_nonfinite(state, skip, last_checkpoint)
        if count > skipped and jax.process_index() == 0:
          print(f'skipped {count - skipped} step(s) with non-finite values ({count} in all)', flush=True)
        skipped = count
      if logs:
        # Each metric's mean over the steps since the last log line (the learning rate: this step's).
        sums, count = jax.device_get(window)
        logged = {k: v / count if count else float('nan') for k, v in sums.items()}
        logged['learning_rate'] = float(metrics['learning_rate'])
        window = None
        reporter.progress(step, logged['loss'], logged['learning_rate'])
        # The window's images per second (the first window's include compiling the step) and the share
        # of its wall time the loop spent waiting for its next batch.
        now = time.perf_counter()
        seconds = max(now - window_start, 1e-9)
        rate, waited = (step - window_step) * config.batch_size / seconds, input_wait / seconds
        window_start, window_step, input_wait = now, step, 0.0
        reporter.scalars(step, {**{f'train/{k}': v for k, v in logged.items()}, 'train/images_per_sec': rate,
                                'train/nonfinite_steps': skipped, 'train/input_wait': waited})
      if notice.reached(step):
        check_nonfinite(state, skip, last_checkpoint)
        ckpt.save(step, state, force=True)
        ckpt.close()
        raise Preempted(f'stopped at step {step} on SIGTERM; checkpoint saved in {ckpt.directory}; '
                        'the same command resumes the run')
      evaluates = step % eval_every == 0 or step == total_steps
      if evaluates:  # the checkpoint then holds the statistics evaluated
        state = with_precise_bn(state)
      if saves or step == total_steps:  # (a final step is a log step: checked above)
        ckpt.save(step, state)
        last_checkpoint = step
      if evaluates:
        results = run_eval(step)
    if start >= total_steps:  # a finished run is evaluated again, as the config now says
      state = with_precise_bn(state)
      results = run_eval(total_steps)
  finally:
    notice.close()
    ckpt.close()
    reporter.close()
  return results
