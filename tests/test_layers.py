"""Layer conventions that decide numerical parity with TF and PyTorch peers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import layers
from inception_jax.models.layers import Conv, Fork, Pool


def _np_pool(x, k, s, pads, reduce, count_pad):
  """Reference pooling on one NHWC image with explicit ((top, bottom), (left, right)) padding."""
  (t, b), (l, r) = pads
  h, w, c = x.shape
  fill = -np.inf if reduce == 'max' else 0.0
  xp = np.full((h + t + b, w + l + r, c), fill, np.float64)
  valid = np.zeros((h + t + b, w + l + r, 1))
  xp[t:t + h, l:l + w] = x
  valid[t:t + h, l:l + w] = 1
  oh, ow = (xp.shape[0] - k) // s + 1, (xp.shape[1] - k) // s + 1
  out = np.zeros((oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      win = xp[i * s:i * s + k, j * s:j * s + k]
      if reduce == 'max':
        out[i, j] = win.max(axis=(0, 1))
      else:
        n = k * k if count_pad else valid[i * s:i * s + k, j * s:j * s + k].sum()
        out[i, j] = win.sum(axis=(0, 1)) / n
  return out


@pytest.fixture
def image():
  return np.random.default_rng(0).normal(size=(7, 6, 3))


def test_same_avg_pool_excludes_padding_like_tensorflow(image):
  got = layers.avg_pool(jnp.asarray(image)[None], 3, 1, 'SAME')[0]
  np.testing.assert_allclose(got, _np_pool(image, 3, 1, ((1, 1), (1, 1)), 'avg', False), atol=1e-6)


def test_explicit_avg_pool_counts_padding_like_pytorch(image):
  got = layers.avg_pool(jnp.asarray(image)[None], 3, 1, 1, count_include_pad=True)[0]
  np.testing.assert_allclose(got, _np_pool(image, 3, 1, ((1, 1), (1, 1)), 'avg', True), atol=1e-6)
  excluded = layers.avg_pool(jnp.asarray(image)[None], 3, 1, 1, count_include_pad=False)[0]
  assert not np.allclose(got, excluded), 'border cells must differ between the two conventions'


def test_ceil_mode_max_pool_keeps_the_partial_last_window(image):
  # 7×6 input, window 3, stride 2: floor mode gives 3×2, ceil mode 3×3 (the last column window is partial).
  floor = layers.max_pool(jnp.asarray(image)[None], 3, 2, 0)[0]
  ceil = layers.max_pool(jnp.asarray(image)[None], 3, 2, 0, ceil_mode=True)[0]
  assert floor.shape == (3, 2, 3) and ceil.shape == (3, 3, 3)
  np.testing.assert_allclose(ceil, _np_pool(image, 3, 2, ((0, 0), (0, 1)), 'max', False), atol=1e-6)


@pytest.mark.parametrize('size,window,stride,pad,expected', [
    (112, 3, 2, 0, 56),  # torchvision GoogLeNet maxpool1
    (14, 2, 2, 0, 7),    # maxpool4
    (5, 3, 2, 1, 3),     # a last window that would start in the padding is dropped
])
def test_ceil_mode_output_sizes_match_pytorch_formula(size, window, stride, pad, expected):
  x = jnp.zeros((1, size, size, 1))
  assert layers.max_pool(x, window, stride, pad, ceil_mode=True).shape[1] == expected


def test_adaptive_avg_pool_uses_overlapping_pytorch_bins():
  x = np.random.default_rng(1).normal(size=(1, 14, 14, 2))
  got = layers.adaptive_avg_pool(jnp.asarray(x), 4)
  edges = [(0, 4), (3, 7), (7, 11), (10, 14)]  # floor(i*14/4) .. ceil((i+1)*14/4)
  want = np.array([[x[0, a:b, c:d].mean(axis=(0, 1)) for c, d in edges] for a, b in edges])
  np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_local_response_norm_matches_caffe_formula():
  x = np.random.default_rng(2).normal(size=(1, 2, 2, 7)).astype(np.float32)
  got = layers.local_response_norm(jnp.asarray(x), size=5, alpha=1e-2, beta=0.75, k=2.0)
  padded = np.pad(x ** 2, ((0, 0), (0, 0), (0, 0), (2, 2)))
  scale = np.stack([padded[..., c:c + 5].sum(-1) for c in range(7)], -1)
  np.testing.assert_allclose(got, x / (2.0 + 1e-2 / 5 * scale) ** 0.75, rtol=1e-5)


def test_bad_padding_is_one_clear_error():
  with pytest.raises(ValueError, match="'SAME', 'VALID'"):
    layers.resolve_padding('FULL')


def test_mixed_concatenates_branches_and_reports_its_width():
  branches = (
      (Conv('a', 8, 1),),
      (Conv('b_1', 4, 1), Fork(((Conv('b_2a', 5, (1, 3)),), (Conv('b_2b', 6, (3, 1)),)))),
      (Pool('max', 3, 2, 'SAME'), Conv('c', 3, 1, 2)),
      (Pool('max', 3, 1),),
  )
  with pytest.raises(TypeError):  # strides mismatch between branches would not concatenate
    jax.eval_shape(lambda: layers.Mixed(branches).init(jax.random.key(0), jnp.zeros((1, 9, 9, 7))))
  branches = branches[:2] + ((Pool('avg', 3, 1), Conv('c', 3, 1)), branches[3])
  out, _ = jax.eval_shape(lambda: layers.Mixed(branches).init_with_output(jax.random.key(0),
                                                                          jnp.zeros((1, 9, 9, 7))))
  assert out.shape == (1, 9, 9, 8 + 5 + 6 + 3 + 7)
  assert layers.out_features(branches, 7) == 8 + 5 + 6 + 3 + 7


def test_conv_bn_without_bn_has_a_bias_and_with_bn_has_none():
  def names(m):
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 5, 5, 3))))
    return {'/'.join(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(v['params'])[0]}

  assert names(layers.ConvBN(4, 3)) == {'conv/kernel', 'bn/scale', 'bn/bias'}
  assert names(layers.ConvBN(4, 3, bn_scale=False)) == {'conv/kernel', 'bn/bias'}
  assert names(layers.ConvBN(4, 3, use_bn=False)) == {'conv/kernel', 'conv/bias'}


def test_conv_bn_normalizes_with_batch_statistics_in_training_and_running_ones_in_eval():
  m = layers.ConvBN(4, 1, activation=None, bn_momentum=0.5)
  x = jax.random.normal(jax.random.key(0), (8, 3, 3, 2)) * 5 + 3
  v = m.init(jax.random.key(1), x)
  y, upd = m.apply(v, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0, atol=1e-4)
  conv = x @ v['params']['conv']['kernel'][0, 0]
  np.testing.assert_allclose(upd['batch_stats']['bn']['mean'], 0.5 * conv.mean(axis=(0, 1, 2)), rtol=1e-4)
  # Eval with the initial running stats (mean 0, var 1) is the raw convolution scaled by 1/sqrt(1 + eps).
  y_eval = m.apply(v, x, train=False)
  np.testing.assert_allclose(y_eval, conv / np.sqrt(1 + 1e-3), rtol=1e-4, atol=1e-5)


def test_count_include_pad_switch_also_applies_to_same_padding(image):
  got = layers.avg_pool(jnp.asarray(image)[None], 3, 1, 'SAME', count_include_pad=True)[0]
  np.testing.assert_allclose(got, _np_pool(image, 3, 1, ((1, 1), (1, 1)), 'avg', True), atol=1e-6)
