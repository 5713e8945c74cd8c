"""Optimizers, learning-rate schedules and weight averaging of the Inception papers, as optax objects.

The papers' recipes, for reference (durations in epochs; `decay_steps` is epochs × steps per epoch):

  GoogLeNet         SGD momentum 0.9, lr × 0.96 every 8 epochs, Polyak averaging at eval.
  Rethinking (v3)   RMSProp decay 0.9, ε 1.0, lr 0.045 × 0.94 every 2 epochs, gradient clipping at 2.0,
                    label smoothing 0.1; Inception-v4/IRv2 use the same optimizer (TF-slim).
  Xception          SGD momentum 0.9, lr 0.045 × 0.94 every 2 epochs (ImageNet); weight decay 1e-5.

"RMSProp" there is TensorFlow 1's `tf.train.RMSPropOptimizer`; `tf_rmsprop` reproduces it exactly.
Weight decay is coupled (an L2 term in the loss, see `losses.l2_weight_decay`) unless an optimizer is built
with `decoupled=True`.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from inception_jax import kernels as kernels_lib
from inception_jax import losses

PyTree = Any
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = float | Schedule

OPTIMIZERS = ('adam', 'adamw', 'nesterov', 'rmsprop', 'sgd')
SCHEDULES = ('constant', 'cosine', 'staircase_exponential')


# ---------------------------------------------------------------------------------------------------------
# Optimizers


def tf_rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: float = 0.9,
    momentum: float = 0.9,
    epsilon: float = 1.0,
    initial_scale: float = 1.0,
) -> optax.GradientTransformation:
  """RMSProp with momentum exactly as TF1's `tf.train.RMSPropOptimizer` (TF-slim's Inception recipes).

  Per step t, with g the gradient and lr_t the learning rate at t:

    ms  ← decay · ms + (1 − decay) · g²          ms starts at `initial_scale` (TF: ones)
    mom ← momentum · mom + lr_t · g / √(ms + ε)   ε inside the square root
    w   ← w − mom

  optax 0.2.8's `optax.rmsprop` chains `scale_by_rms` → `scale_by_learning_rate` → `trace(momentum)`: the
  learning rate is applied before the momentum trace, i.e. inside the accumulator as TF does, so with
  `eps_in_sqrt=True` and `initial_scale=1` it is TF's update term for term, also while the schedule
  changes the rate (tests/test_optim.py pins this against the equations above). PyTorch's RMSprop is
  different on all three counts (ms starts at 0, ε outside the root, lr applied after the momentum
  buffer), and so is `optax.sgd`-style momentum; do not swap one for the other when reproducing a paper.

  Args:
    learning_rate: a float or a schedule of the step count.
    decay: the squared-gradient average's decay (TF's `decay`, a.k.a. rho).
    momentum: momentum of the update accumulator; 0 disables it.
    epsilon: added to the mean square inside the root; 1.0 in the Inception recipes (a large value
      that damps the first steps while ms is still near its initial value).
    initial_scale: initial value of the mean square; TF1 uses 1.

  Returns:
    An optax transformation; apply its updates with `optax.apply_updates`.
  """
  return optax.rmsprop(learning_rate, decay=decay, eps=epsilon, initial_scale=initial_scale,
                       eps_in_sqrt=True, momentum=momentum or None)


def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.9,
        nesterov: bool = False) -> optax.GradientTransformation:
  """SGD with (optionally Nesterov) momentum, as TF's MomentumOptimizer: w ← w − lr_t · (μ·v + g).

  Unlike RMSProp above, TF's momentum optimizer keeps the learning rate outside its accumulator, which is
  what `optax.sgd` does too.
  """
  return optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)


class DecoupledWeightDecayState(NamedTuple):
  count: jax.Array


def decoupled_weight_decay(learning_rate: ScalarOrSchedule,
                           weight_decay: float) -> optax.GradientTransformation:
  """Adds −lr_t · weight_decay · w to the updates, outside the optimizer's own scaling and momentum.

  This is the decoupled decay of AdamW/SGDW (Loshchilov & Hutter 2019), following the learning-rate
  schedule as `optax.adamw` does; chained after `optax.adam` it equals `optax.adamw`. It goes after the
  whole optimizer because optax.adamw's spot for it (just before `scale_by_learning_rate`) is in front of
  TF-RMSProp's momentum trace, which would carry the decay along like an L2 gradient.
  """
  def init_fn(params):
    del params
    return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('decoupled weight decay needs params: call update(grads, state, params)')
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    updates = jax.tree.map(lambda u, w: u - (lr * weight_decay * w).astype(u.dtype), updates, params)
    return updates, DecoupledWeightDecayState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def _update_rules() -> dict[str, Callable[..., optax.GradientTransformation]]:
  # 'adamw' is Adam whose weight decay is always the decoupled one (`decays_decoupled`).
  return {'rmsprop': tf_rmsprop, 'sgd': sgd, 'nesterov': functools.partial(sgd, nesterov=True),
          'adam': optax.adam, 'adamw': optax.adam}


def decays_decoupled(name: str, decoupled: bool) -> bool:
  """Whether weight decay is applied by the optimizer, decoupled from the gradient (`decoupled_weight_decay`),
  rather than as an L2 term in the loss: always for 'adamw' (Loshchilov & Hutter's AdamW), else as the
  config says. The loss and the optimizer both ask this, so the decay is applied exactly once."""
  return decoupled or name == 'adamw'


def create_optimizer(
    name: str,
    schedule: ScalarOrSchedule,
    *,
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    params: PyTree | None = None,
    kernels: str = 'auto',
    **kwargs,
) -> optax.GradientTransformation:
  """The optimizer of a config: optional clipping, the update rule, optional decoupled weight decay.

  Args:
    name: the update rule: 'rmsprop' (TF-RMSProp, `tf_rmsprop`), 'sgd', 'nesterov' (`sgd` with Nesterov
      momentum), 'adam' (`optax.adam`; weight decay in the loss unless `decoupled`) or 'adamw' (Adam with
      the decoupled decay below, always).
    schedule: the learning rate, a float or a schedule (see `create_schedule`).
    clip_norm: if set, gradients are first clipped to this global norm (Rethinking clips at 2.0), before
      any optimizer state sees them.
    weight_decay: used only with `decoupled=True`; otherwise weight decay belongs in the loss
      (`losses.l2_weight_decay`) and the optimizer ignores this value. Decoupled values are on a different
      scale from L2 weights (AdamW's are typically ~1e-2 to 1e-1, not 4e-5).
    decoupled: apply `weight_decay` as decoupled decay (`decoupled_weight_decay`) to conv and dense
      kernels only (`losses.decay_mask`); 'adamw' always does.
    params: optional params tree; when given, the decay mask is computed from it now instead of lazily
      at `init`, which also checks the tree has kernels to decay.
    kernels: how the clipping norm is summed (`inception_jax.kernels`; the same value either way).
    **kwargs: the update rule's own settings, passed through (a config's `optimizer_kwargs[name]`), e.g.
      `decay`, `epsilon`, `momentum` for 'rmsprop'; `momentum` for 'sgd'; `b1`, `b2`, `eps` for 'adam' and 'adamw'.

  Returns:
    An optax GradientTransformation. With decoupled decay, `update` must be given the params.
  """
  rules = _update_rules()
  if name not in rules:
    raise ValueError(f'unknown optimizer {name!r}; valid names: {", ".join(OPTIMIZERS)}')
  accepted = set(inspect.signature(rules[name]).parameters) - {'learning_rate', 'nesterov'}
  unknown = sorted(set(kwargs) - accepted)
  if unknown:
    raise ValueError(f'{name} has no setting {unknown[0]!r}; its settings: {", ".join(sorted(accepted))}')
  base = rules[name](schedule, **kwargs)
  if clip_norm is not None and not clip_norm > 0:
    raise ValueError(f'clip_norm must be positive or None, got {clip_norm}')
  if not weight_decay >= 0:
    raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')

  chain = []
  if clip_norm is not None:
    chain.append(kernels_lib.get(kernels).clip_by_global_norm(clip_norm))
  chain.append(base)
  if decays_decoupled(name, decoupled) and weight_decay > 0:
    mask = losses.decay_mask
    if params is not None:
      mask = losses.decay_mask(params)
      if not any(jax.tree.leaves(mask)):
        raise ValueError("decoupled weight decay: the params tree has no 'kernel' leaves to decay")
    chain.append(optax.masked(decoupled_weight_decay(schedule, weight_decay), mask))
  return optax.chain(*chain)


# ---------------------------------------------------------------------------------------------------------
# Learning-rate schedules. Each maps the step count (0 for the first update) to a float32 learning rate.


def _check_positive(what: str, value: float) -> None:
  if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
    raise ValueError(f'{what} must be a positive number, got {value!r}')


def _check_steps(what: str, value: int, minimum: int = 1) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{what} must be an integer >= {minimum}, got {value!r}')


def staircase_exponential(base_lr: float, decay_rate: float, decay_steps: int) -> Schedule:
  """base_lr · decay_rate ^ floor(step / decay_steps): Rethinking/Xception's 0.94 every 2 epochs,
  GoogLeNet's 0.96 every 8 epochs (TF's `exponential_decay(..., staircase=True)`)."""
  _check_positive('base_lr', base_lr)
  if not (isinstance(decay_rate, (int, float)) and 0 < decay_rate <= 1):
    raise ValueError(f'decay_rate must be in (0, 1], got {decay_rate!r}')
  _check_steps('decay_steps', decay_steps)
  return optax.exponential_decay(base_lr, decay_steps, decay_rate, staircase=True)


def cosine(base_lr: float, total_steps: int) -> Schedule:
  """Half-cosine from base_lr at step 0 to 0 at `total_steps` (and 0 after)."""
  _check_positive('base_lr', base_lr)
  _check_steps('total_steps', total_steps)
  return optax.cosine_decay_schedule(base_lr, total_steps, alpha=0.0)


def constant(base_lr: float) -> Schedule:
  """base_lr at every step."""
  _check_positive('base_lr', base_lr)
  return optax.constant_schedule(base_lr)


def with_warmup(schedule: Schedule, warmup_steps: int) -> Schedule:
  """Linear warmup from 0 to schedule(0) over `warmup_steps`, then `schedule` counted from the warmup's end.

  As in flax's ImageNet example: the rate is 0 at step 0 and reaches schedule(0) at step `warmup_steps`,
  where the main schedule starts at its own step 0, so its decay is not eaten by the warmup.
  `create_schedule` shortens a cosine by the warmup so that it still ends at the last step.
  """
  _check_steps('warmup_steps', warmup_steps, minimum=0)
  if warmup_steps == 0:
    return schedule
  ramp = optax.linear_schedule(0.0, schedule(0), warmup_steps)
  return optax.join_schedules([ramp, schedule], [warmup_steps])


def create_schedule(
    kind: str,
    base_lr: float,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay_rate: float | None = None,
    decay_steps: int | None = None,
) -> Schedule:
  """The learning-rate schedule of a config.

  Args:
    kind: 'constant', 'cosine' (needs total_steps) or 'staircase_exponential' (needs decay_rate and
      decay_steps).
    base_lr: the peak learning rate (after any warmup); see `scaled_learning_rate` for batch scaling.
    total_steps: training length in steps; the cosine reaches 0 there. Optional for the other kinds, where
      it only checks the warmup fits.
    warmup_steps: linear warmup length (see `with_warmup`); the main schedule starts after it.
    decay_rate: staircase factor in (0, 1].
    decay_steps: steps between staircase drops.

  Returns:
    A function from the step count to a float32 learning rate.

  Raises:
    ValueError: with one line naming the bad value, for an unknown kind or an invalid value.
  """
  if kind not in SCHEDULES:
    raise ValueError(f'unknown learning-rate schedule {kind!r}; valid kinds: {", ".join(SCHEDULES)}')
  _check_positive('the learning rate (base_lr)', base_lr)
  _check_steps('warmup_steps', warmup_steps, minimum=0)
  if total_steps is not None:
    _check_steps('total_steps', total_steps)
    if warmup_steps > total_steps:
      raise ValueError(f'warmup_steps ({warmup_steps}) exceeds total_steps ({total_steps})')
  if kind == 'constant':
    main = constant(base_lr)
  elif kind == 'cosine':
    if total_steps is None:
      raise ValueError("the 'cosine' schedule needs total_steps")
    if warmup_steps >= total_steps:
      raise ValueError(f'warmup_steps ({warmup_steps}) leaves no steps of the {total_steps} to decay')
    main = cosine(base_lr, total_steps - warmup_steps)
  else:
    if decay_rate is None or decay_steps is None:
      raise ValueError("the 'staircase_exponential' schedule needs decay_rate and decay_steps")
    main = staircase_exponential(base_lr, decay_rate, decay_steps)
  return with_warmup(main, warmup_steps)


def scaled_learning_rate(base_lr: float, batch_size: int, reference_batch: int) -> float:
  """Linear scaling rule (Goyal et al. 2017): base_lr · batch_size / reference_batch.

  A run with k times a recipe's batch takes k times its rate, usually with a warmup. The reference batch
  is the recipe's: Rethinking's 0.045 was for 50 asynchronous replicas of 32 images, so a config states
  which batch it scales from.
  """
  _check_positive('base_lr', base_lr)
  _check_steps('batch_size', batch_size)
  _check_steps('reference_batch', reference_batch)
  return base_lr * batch_size / reference_batch


# ---------------------------------------------------------------------------------------------------------
# Polyak averaging (exponential moving average of the weights), evaluated instead of the raw weights.


def ema_update(ema_params: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
  """decay · ema + (1 − decay) · params, leaf by leaf; works for BatchNorm statistics too.

  Args:
    ema_params: the running average (a float tree; its dtypes are kept).
    params: the current values, same structure.
    decay: a fixed decay (e.g. 0.9999), or `ema_decay_at(step, decay)` for TF's warm start.

  Returns:
    The updated average.
  """
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params)


def ema_decay_at(step: int | jax.Array, decay: float) -> jax.Array:
  """min(decay, (1 + step) / (10 + step)): `tf.train.ExponentialMovingAverage(decay, num_updates=step)`.

  TF-slim's recipes pass the global step as num_updates, so the average follows the weights closely while
  they move fast early in training (0.1 at step 0, 0.5 at step 8) instead of remembering the
  initialization for ~1/(1 − decay) steps. Use a fixed `decay` for the plain average.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
