"""The training step and the evaluation step, and their jitted form on a device mesh.

The batch is sharded over a 1-D mesh of every device (axis 'data') and the state is replicated, so under
`jax.jit` BatchNorm statistics are those of the global batch (sync BN) with no extra code. For scaling
studies `bn_per_device=True` runs the same step under `shard_map` instead, where each device normalises
with its own part of the batch and gradients are averaged explicitly. The loop that drives these steps is
`inception_jax.train`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from inception_jax import data, kernels, losses, optim

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


# --- the steps ------------------------------------------------------------------------------------------


def nonfinite_quantities(params: PyTree) -> list[str]:
  """What the step checks for NaN and infinity, in order: its input, its loss, then the gradient of each
  parameter array (in the order of `jax.tree.leaves`). `NonFinite.first_quantity` indexes this list."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return ['input images', 'loss'] + ['gradient of ' + '/'.join(str(k.key) for k in path) for path in paths]


def make_loss_fn(model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
  """`loss_fn(params, batch_stats, batch, rng) -> (loss, (parts, new batch_stats, logits))`: the training
  loss of one batch, differentiated with respect to `params` (rematerialised as `config.remat` says)."""
  decoupled = optim.decays_decoupled(config.optimizer, config.decoupled_weight_decay)
  weight_decay_in_loss = 0.0 if decoupled else config.weight_decay

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
  # The weights' and the update's norms each take a pass over every weight that nothing else needs (the
  # update's also keeps the update as an array of its own): free on an accelerator, not on a CPU.
  weight_norms = config.get('log_weight_norms', True)

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
      l2_updates = l2(updates) if weight_norms else jnp.zeros((), jnp.float32)
      return Weights(params, batch_stats, opt_state, ema_params, ema_batch_stats), l2_updates

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
               'learning_rate': schedule(state.step), 'l2_grads': jnp.sqrt(jnp.sum(grad_norms))}
    if weight_norms:
      metrics.update(l2_params=l2(weights.params), l2_updates=l2_updates)
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


def make_batch_statistics_step(model: nn.Module, spec: data.ImageSpec | None = None) -> Callable:
  """`batch_statistics_step(params, batch_stats, batch, rng) -> batch_stats`: every BatchNorm layer's
  statistics of one training batch at fixed weights, as a training step normalises with them (train
  mode: each layer sees the layers below it normalised by this batch's own statistics). Averaged over
  batches they replace the running averages ("precise BN"); `batch_stats` gives only their structure:
  at momentum 0 a layer's running-average update is the batch's statistics exactly."""
  # (A model without the field has no BatchNorm: its statistics are an empty tree.)
  of_the_batch = model.clone(bn_momentum=0.0) if hasattr(model, 'bn_momentum') else model

  def batch_statistics_step(params, batch_stats, batch, rng):
    batch = model_batch(batch, spec)
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    _, updates = of_the_batch.apply({'params': params, 'batch_stats': zeros}, batch['image'], train=True,
                                    rngs={'dropout': rng}, mutable=['batch_stats'])
    return updates['batch_stats']

  return batch_statistics_step


# --- placement on the mesh ------------------------------------------------------------------------------


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh ('data') over `devices` (default: all). Auto axes: XLA propagates the shardings, so the
  model code needs no sharding annotations."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


class JittedSteps:
  """The jitted train and eval steps (and the state's initialisation) on a 1-D mesh of all devices, and
  global-batch assembly."""

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
    jit = kernels.of(model).jit   # every program that runs the model compiles with the setting's XLA options
    self.train_step = jit(step, in_shardings=(self.replicated, self.sharded, self.replicated),
                          out_shardings=(self.replicated, self.replicated),
                          donate_argnums=(0,) if config.get('donate_state', True) else ())
    self.eval_step = jit(make_eval_step(model, spec=spec),
                         in_shardings=(self.replicated,) * 2 + (self.sharded,), out_shardings=self.replicated)
    self.batch_statistics_step = jit(
        make_batch_statistics_step(model, spec=spec),
        in_shardings=(self.replicated,) * 2 + (self.sharded, self.replicated), out_shardings=self.replicated)
    self.init = jit(functools.partial(init_state, model, tx, image_size=config.image_size,
                                      ema=bool(config.ema_decay)),
                    out_shardings=self.replicated)

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global array from each process's slice of the batch."""
    return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in local.items()}
