"""Training and evaluation: the state, the jitted steps on a device mesh, and the loop.

The batch is sharded over a 1-D mesh of every device (axis 'data') and the state is replicated, so under
`jax.jit` BatchNorm statistics are those of the global batch (sync BN) with no extra code. For scaling
studies `bn_per_device=True` runs the same step under `shard_map` instead, where each device normalises
with its own part of the batch and gradients are averaged explicitly.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from inception_jax import checkpoint, data, kernels, losses, models, optim
from inception_jax.reporting import Reporter

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step (and into checkpoints)."""
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  ema_params: PyTree        # Polyak average of params ({} when EMA is off)
  ema_batch_stats: PyTree   # BN statistics collected alongside it
  # Steps whose input, loss or gradients had a NaN or an infinity, as a `NonFinite` record stored as four
  # int32s (the layout checkpoints have always had).
  nonfinite: jax.Array


class NonFinite(NamedTuple):
  """What the steps with a NaN or an infinity in their input, loss or gradients were.

  Attributes:
    count: how many steps had one.
    first_step: the first such step's number (its updates done before it), -1 while there was none.
    first_quantity: the first non-finite quantity of that step, an index into `nonfinite_quantities`.
    quantities: how many of that step's quantities were non-finite.
  """
  count: Any
  first_step: Any
  first_quantity: Any
  quantities: Any

  NONE = (0, -1, -1, -1)

  @classmethod
  def of(cls, state: 'TrainState') -> 'NonFinite':
    return cls(*(state.nonfinite[i] for i in range(4)))

  def stored(self) -> jax.Array:
    return jnp.stack([jnp.asarray(v, jnp.int32) for v in self])


class Weights(NamedTuple):
  """What one update changes besides the step number: the weights, the optimizer's state, the averages."""
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  ema_params: PyTree
  ema_batch_stats: PyTree


# --- durations --------------------------------------------------------------------------------------------


def steps(prefix: str, config: ml_collections.ConfigDict, steps_per_epoch: int | None = None,
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
      warmup_steps=steps('warmup', config, steps_per_epoch, default=0),
      decay_rate=config.get('decay_rate'), decay_steps=decay_steps)
  settings = config.optimizer_kwargs.get(config.optimizer)  # an unknown rule: create_optimizer says so
  tx = optim.create_optimizer(
      config.optimizer, schedule, clip_norm=config.clip_norm or None,
      weight_decay=config.weight_decay, decoupled=config.decoupled_weight_decay, kernels=config.kernels,
      **(settings.to_dict() if settings else {}))
  return tx, schedule


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_size: int,
               ema: bool) -> TrainState:
  """Initial state; call under `jax.jit` with replicated out_shardings to place it on the mesh."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({'params': rng, 'dropout': rng}, x, train=True)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params if ema else {},
                    ema_batch_stats=batch_stats if ema else {},
                    nonfinite=jnp.array(NonFinite.NONE, jnp.int32))


def init_from_checkpoint(state: TrainState, path: str, num_classes: int, ema: bool) -> TrainState:
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
  copy = functools.partial(jax.tree.map, jnp.copy)  # the step donates its state: no buffer twice in it
  return state.replace(params=params, batch_stats=batch_stats, ema_params=copy(params) if ema else {},
                       ema_batch_stats=copy(batch_stats) if ema else {})


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


# --- steps --------------------------------------------------------------------------------------------------




def nonfinite_quantities(params: PyTree) -> list[str]:
  """What the step checks for NaN and infinity, in order: its input, its loss, then the gradient of each
  parameter array (in the order of `jax.tree.leaves`). `NonFinite.first_quantity` indexes this list."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return ['input images', 'loss'] + ['gradient of ' + '/'.join(str(k.key) for k in path) for path in paths]


def make_loss_fn(model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
  """`loss_fn(params, batch_stats, batch, rng) -> (loss, (parts, new batch_stats, logits))`: the training
  loss of one batch, differentiated with respect to `params` (rematerialised as `config.remat` says)."""
  weight_decay_in_loss = 0.0 if config.decoupled_weight_decay else config.weight_decay

  def loss_fn(params, batch_stats, batch, rng):
    out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'],
                               train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
    total, parts = losses.total_loss(out.logits, out.aux_logits, batch['label'],
                                     smoothing=config.label_smoothing, aux_weight=config.aux_weight)
    if weight_decay_in_loss:
      decay = losses.l2_weight_decay(params, weight_decay_in_loss)
      total, parts = total + decay, {**parts, 'weight_decay': decay}
    return total, (parts, updates.get('batch_stats', {}), out.logits)

  if config.get('remat') == 'dots':
    return jax.checkpoint(loss_fn, policy=jax.checkpoint_policies.dots_saveable)
  return loss_fn  # remat='blocks' is built into the model (`build_model`)


def model_batch(batch: dict, spec: data.ImageSpec | None) -> dict:
  """The batch as the model takes it: uint8 pixels (what the input pipelines yield) normalised by `spec`,
  float images as they are. The steps call it on the devices, so the normalisation is part of the step's
  program (a call of its own before the step would, on the CPU backend, wait for the step before it)."""
  if batch['image'].dtype != jnp.uint8:
    return batch
  if spec is None:
    raise ValueError('uint8 images need their normalisation: build the steps with the ImageSpec (spec=...)')
  return {**batch, 'image': spec.normalize(batch['image'])}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, axis_name: str | None = None,
                    spec: data.ImageSpec | None = None) -> Callable:
  """`train_step(state, batch, rng) -> (state, metrics)`; with `axis_name` it runs per device (shard_map).
  uint8 images are normalised by `spec` (`model_batch`)."""
  loss_fn = make_loss_fn(model, config)
  squared_norms = kernels.get(config.kernels).squared_norms

  def l2(tree) -> jax.Array:
    return jnp.sqrt(jnp.sum(squared_norms(tree)))

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    batch = model_batch(batch, spec)
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, rng)
    top1 = losses.topk_correct(logits, batch['label'], 1) / logits.shape[0]
    input_finite = jnp.isfinite(jnp.sum(batch['image'].astype(jnp.float32) * 0))  # NaN iff one is
    if axis_name is not None:
      grads, loss, parts, top1, batch_stats = jax.lax.pmean((grads, loss, parts, top1, batch_stats),
                                                             axis_name)
      input_finite = jax.lax.pmin(input_finite.astype(jnp.int32), axis_name).astype(bool)
    # A gradient array is non-finite when its squared norm is: it holds a NaN or an infinity, or its
    # values reach ~1e19. (The norms are logged anyway; one more reduction per array costs compile time.)
    grad_norms = squared_norms(grads)
    finite = jnp.concatenate([jnp.stack([input_finite, jnp.isfinite(loss)]), jnp.isfinite(grad_norms)])
    ok = jnp.all(finite)

    def update(grads, batch_stats) -> tuple[Weights, jax.Array]:
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
      if config.ema_decay:
        decay = optim.ema_decay_at(state.step, config.ema_decay) if config.ema_warmup else config.ema_decay
        ema_params = optim.ema_update(ema_params, params, decay)
        ema_batch_stats = optim.ema_update(ema_batch_stats, batch_stats, decay)
      return Weights(params, batch_stats, opt_state, ema_params, ema_batch_stats), l2(updates)

    def keep(grads, batch_stats) -> tuple[Weights, jax.Array]:
      del grads, batch_stats
      return (Weights(state.params, state.batch_stats, state.opt_state, state.ema_params,
                      state.ema_batch_stats), jnp.zeros((), jnp.float32))

    # Without skip_nonfinite_steps a non-finite step is applied and counted, and the loop stops at the next
    # log step or checkpoint, before anything non-finite is written. Skipping is an option because the
    # conditional doubles XLA:CPU's compile time of the step.
    if config.get('skip_nonfinite_steps'):
      weights, l2_updates = jax.lax.cond(ok, update, keep, grads, batch_stats)
    else:
      weights, l2_updates = update(grads, batch_stats)
    record = NonFinite.of(state)
    first = (record.count == 0) & ~ok
    record = NonFinite(
        count=record.count + (~ok).astype(jnp.int32),
        first_step=jnp.where(first, state.step, record.first_step),
        first_quantity=jnp.where(first, jnp.argmin(finite).astype(jnp.int32), record.first_quantity),
        quantities=jnp.where(first, jnp.sum(~finite, dtype=jnp.int32), record.quantities))
    new_state = state.replace(step=state.step + 1, nonfinite=record.stored(), **weights._asdict())
    metrics = {'loss': loss, **{f'loss_{k}': v for k, v in parts.items()}, 'top1': top1,
               'learning_rate': schedule(state.step), 'l2_grads': jnp.sqrt(jnp.sum(grad_norms)),
               'l2_params': l2(weights.params), 'l2_updates': l2_updates}
    return new_state, metrics

  return train_step


@jax.jit
def add_to_window(window: tuple[dict, jax.Array] | None, metrics: dict) -> tuple[dict, jax.Array]:
  """The logging window's (sums of each metric, count of steps) with this step's added, on the devices
  (no wait for the step). A step with a non-finite value (one `skip_nonfinite_steps` skipped) is left out
  of the means."""
  if window is None:
    window = (jax.tree.map(jnp.zeros_like, metrics), jnp.zeros((), jnp.int32))
  sums, count = window
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(metrics)]))
  sums = jax.tree.map(lambda total, value: total + jnp.where(finite, value, 0), sums, metrics)
  return sums, count + finite.astype(jnp.int32)


def make_eval_step(model: nn.Module, smoothing: float = 0.0, spec: data.ImageSpec | None = None) -> Callable:
  """`eval_step(params, batch_stats, batch) -> sums` over the real (mask True) examples of a batch; uint8
  images are normalised by `spec` (`model_batch`)."""

  def eval_step(params, batch_stats, batch):
    batch = model_batch(batch, spec)
    out = model.apply({'params': params, 'batch_stats': batch_stats}, batch['image'], train=False)
    mask = batch['mask']
    n = jnp.sum(mask.astype(jnp.float32))
    loss = losses.label_smoothed_cross_entropy(out.logits, batch['label'], smoothing, mask) * n
    return {'loss': loss, 'top1': losses.topk_correct(out.logits, batch['label'], 1, mask),
            'top5': losses.topk_correct(out.logits, batch['label'], min(5, out.logits.shape[-1]), mask),
            'count': n}

  return eval_step



# --- placement on the mesh ----------------------------------------------------------------------------------


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh ('data') over `devices` (default: all). Auto axes: XLA propagates the shardings, so the
  model code needs no sharding annotations."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


class Steps:
  """The jitted train and eval steps on a 1-D mesh of all devices, and global-batch assembly."""

  def __init__(self, model, tx, schedule, config, mesh: jax.sharding.Mesh | None = None,
               spec: data.ImageSpec | None = None):
    self.mesh = mesh or data_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P('data'))
    if config.bn_per_device:
      step = jax.shard_map(make_train_step(model, tx, schedule, config, axis_name='data', spec=spec),
                           mesh=self.mesh, in_specs=(P(), P('data'), P()), out_specs=(P(), P()),
                           check_vma=False)
    else:
      step = make_train_step(model, tx, schedule, config, spec=spec)
    self.train_step = jax.jit(step, in_shardings=(self.replicated, self.sharded, self.replicated),
                              out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))
    self.eval_step = jax.jit(make_eval_step(model, spec=spec),
                             in_shardings=(self.replicated,) * 2 + (self.sharded,), out_shardings=self.replicated)
    self.init = jax.jit(functools.partial(init_state, model, tx, image_size=config.image_size,
                                          ema=bool(config.ema_decay)),
                        out_shardings=self.replicated)

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global array from each process's slice of the batch."""
    return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in local.items()}


def evaluate(steps_: Steps, params, batch_stats, batches: data.EvalBatches) -> dict[str, float]:
  """Exact metrics over the whole split: sums over masked batches, divided by the real example count."""
  sums = None
  for local in batches:
    out = steps_.eval_step(params, batch_stats, steps_.global_batch(local))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  n = float(sums['count'])
  return {'loss': float(sums['loss']) / n, 'top1': float(sums['top1']) / n, 'top5': float(sums['top5']) / n,
          'count': n}


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


def check_nonfinite(state: TrainState, skip: bool, last_checkpoint: int | None) -> int:
  """The number of steps so far with a NaN or infinity in their input, loss or gradients; without `skip`
  any is an error naming the first. Input is a `ValueError` (bad data), the rest `FloatingPointError`."""
  record = NonFinite(*(int(v) for v in jax.device_get(state.nonfinite)))
  if record.count == 0 or skip:
    return record.count
  quantity = nonfinite_quantities(state.params)[record.first_quantity]
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


def check_free_space(workdir: str, state: TrainState) -> None:
  """Fails before the first step when the workdir's disk cannot hold two checkpoints (the newest and the
  one being written)."""
  need = 2 * sum(x.nbytes for x in jax.tree.leaves(state))
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise ValueError(f'workdir {workdir!r}: {free / 2**20:,.0f} MiB free on its disk, but two checkpoints '
                     f'of this run take {need / 2**20:,.0f} MiB; free some space or choose another workdir')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       make_probe: Callable[[nn.Module, data.ImageSpec],
                                            Callable[[int, TrainState, dict], None]] | None = None
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
  total_steps = steps('total', config, steps_per_epoch)
  if not total_steps:
    raise ValueError('set total_steps or total_epochs')
  log_every = steps('log_every', config, steps_per_epoch, default=50)
  eval_every = steps('eval_every', config, steps_per_epoch, default=total_steps)
  checkpoint_every = steps('checkpoint_every', config, steps_per_epoch, default=total_steps)

  model = build_model(config, num_classes)
  probe = make_probe(model, spec) if make_probe else None
  tx, schedule = build_optimizer(config, total_steps, steps_per_epoch, config.batch_size)
  steps_ = Steps(model, tx, schedule, config, spec=spec)
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  state = steps_.init(init_rng)

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
                                        sharding=steps_.sharded)
    eval_data = train_eval_data = None
  else:
    augment = data.TrainAugment(area_range=tuple(config.augment.area_range),
                                aspect_ratio_range=tuple(config.augment.aspect_ratio_range),
                                flip=config.augment.flip, color_distort=config.augment.color_distort)
    # Batches are put on the devices two steps ahead, so the copy overlaps the step before.
    train_iter = data.prefetch_to_devices(
        data.train_batches(source, spec, local_batch, seed=config.seed, start_step=start, augment=augment),
        steps_.global_batch)
    eval_data = data.eval_batches(source, spec, eval_local_batch)
    train_eval_data = (data.eval_batches(source, spec, eval_local_batch, split='train')
                       if config.get('eval_train') else None)

  def run_eval(step):
    if eval_data is None:
      print(f'step {step}: no evaluation of synthetic data', flush=True)
      return {}
    results = {}
    weights = [('eval', state.params, state.batch_stats)]
    if config.ema_decay:
      weights.append(('eval_ema', state.ema_params, state.ema_batch_stats))
    for prefix, params, batch_stats in weights:
      m = evaluate(steps_, params, batch_stats, eval_data)
      results.update({f'{prefix}/{k}': v for k, v in m.items()})
    if train_eval_data is not None:  # the raw weights on the training examples: the train-test gap
      m = evaluate(steps_, state.params, state.batch_stats, train_eval_data)
      results.update({f'eval_train/{k}': v for k, v in m.items()})
    reporter.scalars(step, results)
    print(f'step {step}: ' + '  '.join(f'{k} {v:.4f}' for k, v in results.items()), flush=True)
    return results

  results = {}
  reporter.start(start)
  notice = PreemptionNotice()
  skip, skipped = config.skip_nonfinite_steps, 0
  last_checkpoint = start or None
  window_start, input_wait, window = time.perf_counter(), 0.0, None
  try:
    for step in range(start + 1, total_steps + 1):
      waiting = time.perf_counter()
      batch = next(train_iter)
      input_wait += time.perf_counter() - waiting
      if probe is not None:
        probe(step - 1, state, batch)
      state, metrics = steps_.train_step(state, batch, step_rng)
      window = add_to_window(window, metrics)
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
        rate = reporter.progress(step, logged['loss'], logged['learning_rate'])
        # The share of the window's wall time the loop spent waiting for its next batch.
        now = time.perf_counter()
        waited, window_start, input_wait = input_wait / max(now - window_start, 1e-9), now, 0.0
        reporter.scalars(step, {**{f'train/{k}': v for k, v in logged.items()}, 'train/images_per_sec': rate,
                                'train/nonfinite_steps': skipped, 'train/input_wait': waited})
      if notice.reached(step):
        check_nonfinite(state, skip, last_checkpoint)
        ckpt.save(step, state, force=True)
        ckpt.close()
        raise Preempted(f'stopped at step {step} on SIGTERM; checkpoint saved in {ckpt.directory}; '
                        'the same command resumes the run')
      if saves or step == total_steps:  # (a final step is a log step: checked above)
        ckpt.save(step, state)
        last_checkpoint = step
      if step % eval_every == 0 or step == total_steps:
        results = run_eval(step)
    if start >= total_steps:
      results = run_eval(total_steps)
  finally:
    notice.close()
    ckpt.close()
    reporter.close()
  return results
