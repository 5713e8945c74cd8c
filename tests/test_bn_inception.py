"""BN-Inception (Ioffe & Szegedy 2015, Figure 5), checked against the figure's table."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import bn_inception  # registers bn_inception
from inception_jax.models import layers
from inception_jax.models.registry import create_model, model_info
from inception_jax.summary import summarize

# Figure 5, typed in again: (#1×1, #3×3 reduce, #3×3, #double 3×3 reduce, #double 3×3, pool proj, stride);
# pool proj None is the stride-2 max pool passed through.
FIGURE_5 = {
    'inception_3a': (64, 64, 64, 64, 96, 32, 1),
    'inception_3b': (64, 64, 96, 64, 96, 64, 1),
    'inception_3c': (0, 128, 160, 64, 96, None, 2),
    'inception_4a': (224, 64, 96, 96, 128, 128, 1),
    'inception_4b': (192, 96, 128, 96, 128, 128, 1),
    'inception_4c': (160, 128, 160, 128, 160, 128, 1),
    'inception_4d': (96, 128, 192, 160, 192, 128, 1),
    'inception_4e': (0, 128, 192, 192, 256, None, 2),
    'inception_5a': (352, 192, 320, 160, 224, 128, 1),
    'inception_5b': (352, 192, 320, 192, 224, 128, 1),
}


def figure_5_layers():
  """(kernel, cin, cout, output grid) of every convolution at 224×224, the module widths and grids."""
  convs = [(7, 3, 64, 112), (1, 64, 64, 56), (3, 64, 192, 56)]
  cin, grid, widths, grids = 192, 28, [], []
  for c1, r3, c3, rd, d3, proj, stride in FIGURE_5.values():
    out = grid // stride
    convs += [(1, cin, c1, grid)] if c1 else []
    convs += [(1, cin, r3, grid), (3, r3, c3, out), (1, cin, rd, grid), (3, rd, d3, grid), (3, d3, d3, out)]
    convs += [(1, cin, proj, grid)] if proj else []
    cin = c1 + c3 + d3 + (proj or cin)
    grid = out
    widths.append(cin)
    grids.append(grid)
  return convs, widths, grids


def count(model, size=224, train=False):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=train))
  return sum(x.size for x in jax.tree.leaves(v['params']))


def test_parameter_count_is_figure_5_with_batch_norm():
  convs, widths, _ = figure_5_layers()
  # Every convolution: weights, no bias, BN beta and gamma.
  expected = sum(k * k * cin * cout + 2 * cout for k, cin, cout, _ in convs) + widths[-1] * 1000 + 1000
  assert count(create_model('bn_inception', aux_logits=False)) == expected
  assert count(create_model('bn_inception'), train=True) == expected  # no auxiliary heads to add
  # The Caffe model (Cadene's `bninception`, ~11.3M) also gives each convolution a bias next to its BN.
  caffe = expected + sum(cout for *_, cout, _ in convs)
  assert caffe == pytest.approx(11.3e6, rel=0.001)


def test_module_widths_and_grids_at_224():
  convs, widths, grids = figure_5_layers()
  # The filters give 608/608/1056 after 4c/4d/4e, not the 576/576/1024 of Figure 5's output column.
  assert widths == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
  assert grids == [28, 28, 14, 14, 14, 14, 14, 7, 7, 7]
  rows = {r.name: r.output_shape for r in summarize(create_model('bn_inception'), (1, 224, 224, 3)).rows}
  assert rows['conv1_7x7_s2'] == (112, 112, 64)
  assert rows['conv2_3x3'] == (56, 56, 192)
  assert [rows[m] for m in FIGURE_5] == [(g, g, c) for g, c in zip(grids, widths)]


def test_multiply_adds_at_224_are_about_2_g():
  convs, widths, _ = figure_5_layers()
  macs = sum(g * g * k * k * cin * cout for k, cin, cout, g in convs) + widths[-1] * 1000
  assert summarize(create_model('bn_inception'), (1, 224, 224, 3)).macs == macs
  assert macs == pytest.approx(2.0e9, rel=0.02)


def test_grid_reduction_modules_pass_the_pool_through_and_have_no_1x1_branch():
  model = create_model('bn_inception')
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  for name in ('inception_3c', 'inception_4e'):
    assert set(v['params'][name]) == {'3x3_reduce', '3x3', 'double_3x3_reduce', 'double_3x3_1',
                                      'double_3x3_2'}
  assert set(v['params']['inception_5b']) >= {'1x1', 'pool_proj'}
  assert set(v['params']['conv1_7x7_s2']) == {'conv', 'bn'}
  assert set(v['params']['conv1_7x7_s2']['conv']) == {'kernel'}


def test_no_aux_heads_and_no_dropout_by_default():
  info = model_info('bn_inception')
  assert info.num_aux_heads == 0 and info.input_size == 224 and info.min_input_size == 1
  model = create_model('bn_inception', aux_logits=True)
  assert model.dropout_rate == 0.0
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  v = jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)
  out, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs=rngs, mutable=['batch_stats']),
                          v, x)
  assert out.aux_logits == () and out.logits.shape == (1, 1000)


def test_bn_epsilon_and_momentum_reach_every_batch_norm():
  model = create_model('bn_inception', bn_epsilon=1e-5, bn_momentum=0.9)
  seen = []

  def record(next_fun, args, kwargs, context):
    if type(context.module).__name__ == 'BatchNorm' and context.method_name == '__call__':
      seen.append((context.module.epsilon, context.module.momentum))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert len(seen) == len(figure_5_layers()[0]) and set(seen) == {(1e-5, 0.9)}


@pytest.mark.parametrize('include_pad', [False, True])
def test_average_pool_convention_switch_takes_effect(include_pad):
  """TF's 'SAME' average excludes the padded cells at the borders; the Caffe port counts them as zeros."""
  conv = functools.partial(layers.ConvBN, use_bn=False, use_bias=False, activation=None,
                           kernel_init=nn.initializers.ones)
  pool_branch = bn_inception.BODY[0][1][-1]  # inception_3a: avg pool → pool_proj
  mixed = layers.Mixed((pool_branch,), conv, pool_count_include_pad=include_pad)
  x = jnp.ones((1, 4, 4, 1))
  y = mixed.apply(mixed.init(jax.random.key(0), x), x)
  corner = 4 / 9 if include_pad else 1.0
  np.testing.assert_allclose(y[0, 0, 0], corner, rtol=1e-6)
  np.testing.assert_allclose(y[0, 1, 1], 1.0, rtol=1e-6)
