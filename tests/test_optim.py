"""Optimizers, schedules and EMA against the papers' (TF's) equations, written out in numpy here."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inception_jax import optim

GRADS = np.array([[0.5, -2.0], [1.5, 0.25], [-3.0, 1.0]])
LRS = np.array([0.1, 0.05, 0.025])


def _np_tf_rmsprop(w, grads, lrs, decay=0.9, momentum=0.9, eps=1.0, lr_inside_momentum=True):
  """TF1's ApplyRMSProp (ms starts at 1): ms ← ρ·ms + (1-ρ)·g², mom ← μ·mom + lr·g/√(ms+ε), w ← w − mom.

  With lr_inside_momentum=False the lr multiplies the momentum buffer instead (PyTorch-style), the variant
  that must NOT match.
  """
  w = np.array(w, np.float64)
  ms, mom = np.ones_like(w), np.zeros_like(w)
  for g, lr in zip(grads, lrs):
    ms = decay * ms + (1 - decay) * g**2
    if lr_inside_momentum:
      mom = momentum * mom + lr * g / np.sqrt(ms + eps)
      w = w - mom
    else:
      mom = momentum * mom + g / np.sqrt(ms + eps)
      w = w - lr * mom
  return w


def _run(tx, w, grads):
  w = jnp.asarray(w, jnp.float32)
  state = tx.init(w)
  update = jax.jit(tx.update)
  for g in grads:
    updates, state = update(jnp.asarray(g, jnp.float32), state, w)
    w = optax.apply_updates(w, updates)
  return np.asarray(w)


@pytest.mark.parametrize('build', [
    lambda lr: optim.tf_rmsprop(lr),
    lambda lr: optim.create_optimizer('rmsprop', lr),
])
def test_tf_rmsprop_matches_tf_equations_with_changing_lr(build):
  w0 = np.array([1.0, -1.0])
  schedule = lambda count: jnp.asarray(LRS, jnp.float32)[count]
  expected = _np_tf_rmsprop(w0, GRADS, LRS)
  # The two lr placements differ by far more than the tolerance, so the check can tell them apart.
  assert np.abs(expected - _np_tf_rmsprop(w0, GRADS, LRS, lr_inside_momentum=False)).max() > 1e-2
  np.testing.assert_allclose(_run(build(schedule), w0, GRADS), expected, rtol=1e-5, atol=1e-7)


def test_sgd_and_nesterov_follow_tf_momentum():
  # TF MomentumOptimizer: v ← μv + g; w ← w − lr·v (Nesterov: w ← w − lr·(g + μv)).
  w0 = np.array([1.0, -1.0])
  for name, nesterov in (('sgd', False), ('nesterov', True)):
    w, v = w0.copy(), np.zeros(2)
    for g, lr in zip(GRADS, LRS):
      v = 0.9 * v + g
      w = w - lr * ((g + 0.9 * v) if nesterov else v)
    tx = optim.create_optimizer(name, lambda c: jnp.asarray(LRS, jnp.float32)[c])
    np.testing.assert_allclose(_run(tx, w0, GRADS), w, rtol=1e-5)


def test_unknown_optimizer_lists_valid_names():
  with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; valid names: adam, adamw, nesterov, rmsprop, sgd"):
    optim.create_optimizer('adagrad', 0.1)


def test_an_update_rules_settings_pass_through_and_a_wrong_one_is_named():
  # Against optax's Adam built with the same b2, and against the default b2 (so the setting took effect).
  grads = [np.array([1.0, -2.0]), np.array([3.0, 0.5])]
  ours = _run(optim.create_optimizer('adam', 0.1, b2=0.5), np.zeros(2), grads)
  np.testing.assert_allclose(ours, _run(optax.adam(0.1, b2=0.5), np.zeros(2), grads), rtol=1e-6)
  assert np.abs(ours - _run(optax.adam(0.1), np.zeros(2), grads)).max() > 1e-3
  with pytest.raises(ValueError, match="adam has no setting 'decay'; its settings: b1, b2, eps"):
    optim.create_optimizer('adam', 0.1, decay=0.9)


def test_a_config_setting_reaches_the_update_rule():
  from experiments.configs import base
  from inception_jax import train
  c = base.get_config()
  c.optimizer = 'sgd'
  grads = [np.array([1.0, -2.0]), np.array([3.0, 0.5])]
  moved = {}
  for momentum in (0.9, 0.0):
    c.optimizer_kwargs.sgd.momentum = momentum
    c.clip_norm = 0.0
    tx, _ = train.build_optimizer(c, total_steps=100, steps_per_epoch=10, global_batch=256)
    moved[momentum] = _run(tx, np.zeros(2), grads)
  # Second step: −lr·(g2 + μ·g1) with momentum, −lr·g2 without (the staircase schedule is still at 0.045).
  np.testing.assert_allclose(moved[0.0], -0.045 * (grads[0] + grads[1]), rtol=1e-5)
  np.testing.assert_allclose(moved[0.9], -0.045 * (grads[0] + grads[1] + 0.9 * grads[0]), rtol=1e-5)


def test_clipping_applies_before_the_update():
  # With SGD, lr 1 and no momentum the update is −(clipped gradient): norm 500 is clipped to 2.
  tx = optim.create_optimizer('sgd', 1.0, momentum=0.0, clip_norm=2.0)
  w = _run(tx, np.zeros(2), [np.array([300.0, 400.0])])
  np.testing.assert_allclose(w, [-1.2, -1.6], rtol=1e-6)
  # Clipping must act on the gradient, not on RMSProp's normalized update (which is already small).
  g = np.array([300.0, 400.0])
  clipped = _run(optim.create_optimizer('rmsprop', 0.1, clip_norm=2.0), np.zeros(2), [g])
  np.testing.assert_allclose(clipped, _np_tf_rmsprop(np.zeros(2), [g * 2 / 500], [0.1]), rtol=1e-5)


PARAMS = {
    'conv': {'kernel': jnp.array([[1.0, 2.0], [3.0, 4.0]]), 'bias': jnp.array([5.0, 6.0])},
    'bn': {'scale': jnp.array([7.0]), 'bias': jnp.array([8.0])},
}


@pytest.mark.parametrize('name', ['sgd', 'rmsprop', 'adam'])
def test_decoupled_weight_decay_touches_only_kernels(name):
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  for params in (None, PARAMS):
    tx = optim.create_optimizer(name, 0.1, weight_decay=0.5, decoupled=True, params=params)
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    # Zero gradients leave exactly the decay term −lr·wd·w, on kernels only.
    np.testing.assert_allclose(updates['conv']['kernel'], -0.1 * 0.5 * PARAMS['conv']['kernel'], rtol=1e-6)
    for path in (('conv', 'bias'), ('bn', 'scale'), ('bn', 'bias')):
      assert float(jnp.abs(updates[path[0]][path[1]]).sum()) == 0.0


@pytest.mark.parametrize('name,decoupled', [('adamw', False), ('adamw', True), ('adam', True)])
def test_adamw_is_adam_with_decoupled_decay_as_optax_builds_it(name, decoupled):
  """'adamw' decays decoupled whatever the config's switch; 'adam' does when the switch asks."""
  grads = jax.tree.map(lambda p: 0.3 * p - 1.0, PARAMS)
  mask = {'conv': {'kernel': True, 'bias': False}, 'bn': {'scale': False, 'bias': False}}
  ours = optim.create_optimizer(name, 1e-2, weight_decay=0.05, decoupled=decoupled)
  ref = optax.adamw(1e-2, weight_decay=0.05, mask=mask)
  got, _ = ours.update(grads, ours.init(PARAMS), PARAMS)
  want, _ = ref.update(grads, ref.init(PARAMS), PARAMS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_the_loss_carries_l2_decay_exactly_when_the_optimizer_does_not_decay():
  from experiments.configs import base
  from inception_jax import losses
  from inception_jax import step as step_lib
  from tiny_config import TinyInception
  model = TinyInception(num_classes=3)
  x = jnp.ones((2, 8, 8, 3))
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(0)}, x, train=True)
  batch = {'image': x, 'label': jnp.array([0, 1])}
  for name, decoupled, in_loss in (('adam', False, True), ('adam', True, False), ('adamw', False, False),
                                   ('sgd', False, True)):
    c = base.get_config()
    c.optimizer, c.decoupled_weight_decay, c.weight_decay, c.label_smoothing = name, decoupled, 0.1, 0.0
    _, (parts, _, _) = step_lib.make_loss_fn(model, c)(variables['params'], variables['batch_stats'], batch,
                                                       jax.random.key(1))
    assert ('weight_decay' in parts) == in_loss, (name, decoupled)
    if in_loss:
      assert float(parts['weight_decay']) == pytest.approx(
          float(losses.l2_weight_decay(variables['params'], 0.1)), rel=1e-6)


def test_coupled_weight_decay_is_left_to_the_loss():
  tx = optim.create_optimizer('sgd', 0.1, weight_decay=0.5, decoupled=False)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, PARAMS), tx.init(PARAMS), PARAMS)
  assert all(float(jnp.abs(u).sum()) == 0.0 for u in jax.tree.leaves(updates))


def test_staircase_exponential():
  fn = optim.staircase_exponential(0.045, 0.94, 100)
  steps = [0, 99, 100, 201]
  np.testing.assert_allclose([fn(s) for s in steps], [0.045, 0.045, 0.045 * 0.94, 0.045 * 0.94**2],
                             rtol=1e-6)
  # The same under jit with an int32 step counter, as the optimizer calls it.
  np.testing.assert_allclose(jax.jit(fn)(jnp.int32(201)), 0.045 * 0.94**2, rtol=1e-6)


def test_warmup_ramps_linearly_then_starts_the_schedule():
  fn = optim.create_schedule('staircase_exponential', 0.4, total_steps=1000, warmup_steps=10,
                             decay_rate=0.5, decay_steps=20)
  np.testing.assert_allclose([fn(s) for s in (0, 1, 5, 9)], [0.0, 0.04, 0.2, 0.36], rtol=1e-6, atol=1e-9)
  # After warmup the main schedule counts from 0: its first drop is 20 steps after the warmup.
  np.testing.assert_allclose([fn(s) for s in (10, 29, 30)], [0.4, 0.4, 0.2], rtol=1e-6)


def test_cosine_starts_at_base_and_ends_at_zero():
  fn = optim.create_schedule('cosine', 0.1, total_steps=100, warmup_steps=10)
  np.testing.assert_allclose(fn(10), 0.1, rtol=1e-6)
  np.testing.assert_allclose(fn(55), 0.05, rtol=1e-5)  # halfway through the decay
  assert abs(float(fn(100))) < 1e-7 and abs(float(fn(150))) < 1e-7
  np.testing.assert_allclose(optim.cosine(2.0, 10)(0), 2.0)


def test_constant_schedule():
  fn = optim.create_schedule('constant', 0.3)
  np.testing.assert_allclose([fn(0), fn(10**6)], [0.3, 0.3], rtol=1e-6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(kind='linear', base_lr=0.1), 'valid kinds: constant, cosine, staircase_exponential'),
    (dict(kind='constant', base_lr=0.0), 'base_lr'),
    (dict(kind='constant', base_lr=-0.1), 'base_lr'),
    (dict(kind='cosine', base_lr=0.1), 'total_steps'),
    (dict(kind='cosine', base_lr=0.1, total_steps=10, warmup_steps=20), 'exceeds'),
    (dict(kind='cosine', base_lr=0.1, total_steps=10, warmup_steps=10), 'no steps'),
    (dict(kind='constant', base_lr=0.1, warmup_steps=-1), 'warmup_steps'),
    (dict(kind='staircase_exponential', base_lr=0.1, decay_rate=1.5, decay_steps=10), 'decay_rate'),
    (dict(kind='staircase_exponential', base_lr=0.1, decay_rate=0.0, decay_steps=10), 'decay_rate'),
    (dict(kind='staircase_exponential', base_lr=0.1, decay_rate=0.9, decay_steps=0), 'decay_steps'),
    (dict(kind='staircase_exponential', base_lr=0.1), 'decay_rate and decay_steps'),
])
def test_bad_schedules_raise_one_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match) as info:
    optim.create_schedule(**kwargs)
  assert '\n' not in str(info.value)


def test_scaled_learning_rate():
  assert optim.scaled_learning_rate(0.1, 1024, 256) == pytest.approx(0.4)
  assert optim.scaled_learning_rate(0.045, 16, 32) == pytest.approx(0.0225)


def test_ema_update_and_tf_warm_decay():
  ema = {'params': jnp.array([1.0, 2.0]), 'batch_stats': {'mean': jnp.array([0.0])}}
  new = {'params': jnp.array([3.0, -2.0]), 'batch_stats': {'mean': jnp.array([10.0])}}
  out = optim.ema_update(ema, new, 0.9)
  np.testing.assert_allclose(out['params'], [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)
  np.testing.assert_allclose(out['batch_stats']['mean'], [1.0], rtol=1e-6)
  # tf.train.ExponentialMovingAverage(decay, num_updates=step): min(decay, (1 + step) / (10 + step)).
  np.testing.assert_allclose([optim.ema_decay_at(s, 0.9999) for s in (0, 8, 90)], [0.1, 0.5, 0.91],
                             rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay_at(10**6, 0.9999), 0.9999, rtol=1e-7)
  np.testing.assert_allclose(jax.jit(optim.ema_decay_at, static_argnums=1)(jnp.int32(8), 0.99), 0.5)
