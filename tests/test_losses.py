"""Losses and eval counts, checked against hand computations written out independently here."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inception_jax import losses

LOGITS = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
LABELS = np.array([2, 0])


def _np_smoothed_ce(logits, labels, eps):
  """Per-example cross-entropy against (1 - eps)·onehot + eps/K, from the log-softmax formula."""
  logits = np.asarray(logits, np.float64)
  k = logits.shape[-1]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.full(logits.shape, eps / k)
  targets[np.arange(len(labels)), labels] += 1.0 - eps
  return -(targets * log_probs).sum(-1)


def test_label_smoothing_matches_hand_computation():
  # Written out for the first example: log p = x - log(e + e² + e³); target (0.1/3, 0.1/3, 0.9 + 0.1/3).
  lse0 = np.log(np.e + np.e**2 + np.e**3)
  first = -((0.1 / 3) * (1 - lse0) + (0.1 / 3) * (2 - lse0) + (0.9 + 0.1 / 3) * (3 - lse0))
  per_example = _np_smoothed_ce(LOGITS, LABELS, 0.1)
  np.testing.assert_allclose(per_example[0], first, rtol=1e-12)
  loss = losses.label_smoothed_cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), smoothing=0.1)
  np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-6)
  # Smoothing changes the value: the test would catch an ignored ε.
  assert abs(float(loss) - _np_smoothed_ce(LOGITS, LABELS, 0.0).mean()) > 1e-2


def test_no_smoothing_is_optax_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, size=5)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  np.testing.assert_allclose(losses.label_smoothed_cross_entropy(logits, labels), expected, rtol=1e-6)


def test_mask_excludes_examples():
  per_example = _np_smoothed_ce(LOGITS, LABELS, 0.1)
  for mask, expected in (([True, False], per_example[0]), ([0.0, 1.0], per_example[1])):
    loss = losses.label_smoothed_cross_entropy(LOGITS, LABELS, 0.1, mask=jnp.asarray(mask))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_all_masked_out_is_zero_with_finite_gradient():
  mask = jnp.zeros(2, bool)
  fn = lambda x: losses.label_smoothed_cross_entropy(x, LABELS, 0.1, mask=mask)
  assert float(fn(jnp.asarray(LOGITS))) == 0.0
  assert np.all(np.isfinite(jax.grad(fn)(jnp.asarray(LOGITS))))


def test_bfloat16_logits_give_float32_loss():
  logits = jnp.asarray(LOGITS, jnp.bfloat16)
  loss = losses.label_smoothed_cross_entropy(logits, LABELS, 0.1)
  assert loss.dtype == jnp.float32
  exact = _np_smoothed_ce(np.asarray(logits.astype(jnp.float32)), LABELS, 0.1).mean()
  np.testing.assert_allclose(loss, exact, rtol=1e-6)


def test_smoothing_out_of_range_is_an_error():
  with pytest.raises(ValueError, match='smoothing'):
    losses.label_smoothed_cross_entropy(LOGITS, LABELS, 1.5)


def test_total_loss_is_main_plus_weighted_aux_sum():
  aux1 = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
  aux2 = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  total, parts = losses.total_loss(LOGITS, (aux1, aux2), LABELS, smoothing=0.1, aux_weight=0.3)
  main, a1, a2 = (_np_smoothed_ce(x, LABELS, 0.1).mean() for x in (LOGITS, aux1, aux2))
  assert list(parts) == ['main', 'aux1', 'aux2']
  np.testing.assert_allclose([parts['main'], parts['aux1'], parts['aux2']], [main, a1, a2], rtol=1e-6)
  np.testing.assert_allclose(total, main + 0.3 * (a1 + a2), rtol=1e-6)
  # aux1 of a uniform first row: log 3 for any target, the hand check of the helper itself.
  np.testing.assert_allclose(_np_smoothed_ce(aux1, LABELS, 0.1)[0], np.log(3), rtol=1e-12)


def test_total_loss_without_aux_heads_is_main():
  total, parts = losses.total_loss(LOGITS, (), LABELS, smoothing=0.0, aux_weight=0.4)
  assert list(parts) == ['main']
  np.testing.assert_allclose(total, _np_smoothed_ce(LOGITS, LABELS, 0.0).mean(), rtol=1e-6)


PARAMS = {
    'conv': {'kernel': jnp.array([[1.0, 2.0], [3.0, 4.0]]), 'bias': jnp.array([5.0, 6.0])},
    'bn': {'scale': jnp.array([7.0]), 'bias': jnp.array([8.0])},
    'fc': {'kernel': jnp.array([1.0, -1.0]), 'bias': jnp.array([9.0])},
}


def test_decay_mask_marks_only_kernels():
  mask = losses.decay_mask(PARAMS)
  assert mask == {'conv': {'kernel': True, 'bias': False}, 'bn': {'scale': False, 'bias': False},
                  'fc': {'kernel': True, 'bias': False}}


def test_l2_weight_decay_is_tf_slim_half_sum_of_squared_kernels():
  # Kernels only: ½ · 4e-5 · (1 + 4 + 9 + 16 + 1 + 1); biases and BN scale (5..9) would add a lot.
  np.testing.assert_allclose(losses.l2_weight_decay(PARAMS, 4e-5), 4e-5 * 0.5 * 32.0, rtol=1e-6)
  grads = jax.grad(losses.l2_weight_decay)(PARAMS, 0.1)
  np.testing.assert_allclose(grads['conv']['kernel'], 0.1 * PARAMS['conv']['kernel'], rtol=1e-6)
  assert float(jnp.abs(grads['bn']['scale']).sum() + jnp.abs(grads['conv']['bias']).sum()) == 0.0


def test_decay_mask_on_flax_params():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(2, (1, 1), use_bias=False, name='conv')(x)
      x = nn.BatchNorm(use_running_average=True, name='bn')(x)
      return nn.Dense(3, name='fc')(x)

  params = Net().init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)))['params']
  flat = {'/'.join(k.key for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(losses.decay_mask(params))}
  assert flat == {'conv/kernel': True, 'bn/scale': False, 'bn/bias': False, 'fc/kernel': True,
                  'fc/bias': False}


def test_topk_correct_with_mask_and_ties():
  logits = jnp.array([
      [0.1, 0.9, 0.0, 0.0],   # label 1: top-1 hit
      [0.5, 0.4, 0.3, 0.9],   # label 0: 2nd → top-2 hit only
      [0.0, 0.1, 0.2, 0.3],   # label 0: last → never a hit
      [0.2, 0.2, 0.2, 0.2],   # label 3, all tied: ties go to the lower index, so not top-1 (nor top-3)
  ])
  labels = jnp.array([1, 0, 0, 3])
  assert float(losses.topk_correct(logits, labels, 1)) == 1.0
  assert float(losses.topk_correct(logits, labels, 2)) == 2.0
  assert float(losses.topk_correct(logits, labels, 4)) == 4.0
  count = losses.topk_correct(logits, labels, 2, mask=jnp.array([False, True, True, True]))
  assert count.dtype == jnp.float32 and float(count) == 1.0
