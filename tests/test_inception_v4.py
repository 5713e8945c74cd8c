"""Inception-v4 and Inception-ResNet-v1/v2: sizes of the reference implementations, the paper's channel
arithmetic, residual scaling, and where the blocks and the auxiliary head sit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import inception_v4
from inception_jax.models.blocks import block_structure
from inception_jax.models.inception_v4 import ResidualBlock
from inception_jax.models.layers import Conv
from inception_jax.models.registry import create_model, model_info
from inception_jax.summary import summarize

NAMES = ['inception_v4', 'inception_resnet_v1', 'inception_resnet_v2']


@functools.lru_cache(maxsize=None)
def count(name, aux_logits=False, collections=('params',), **overrides):
  model = create_model(name, aux_logits=aux_logits, **overrides)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))
  return sum(x.size for c in collections for x in jax.tree.leaves(v.get(c, {})))


@functools.lru_cache(maxsize=None)
def summary(name, size=299, **overrides):
  """Per-block output shapes and MACs, eval mode, aux off (shapes only: nothing is allocated)."""
  return summarize(create_model(name, aux_logits=False, **overrides), (1, size, size, 3))


def shapes(name, size=299, **overrides):
  """Output shape (H, W, C) of every top-level block."""
  return {r.name: r.output_shape for r in summary(name, size, **overrides).rows}


# ------------------------------------------------------------------------------------------------------
# Parameter counts


def test_inception_v4_parameter_count_equals_timm():
  assert count('inception_v4') == 42_679_816


def test_inception_resnet_v2_parameter_count_equals_timm():
  assert count('inception_resnet_v2') == 55_843_464


def test_inception_resnet_v2_keras_counting_without_bn_scale_plus_running_statistics():
  assert count('inception_resnet_v2', bn_scale=False, collections=('params', 'batch_stats')) == 55_873_736


def paper_inception_resnet_v1_params(num_classes=1000):
  """Inception-ResNet-v1 summed by hand from the paper's Figures 14, 10, 7, 11, 12 and 13.

  Every convolution is followed by BN with gamma and beta (no bias); the residual 1×1 up-projections are
  linear with a bias and no BN.
  """
  def conv(cin, cout, kh, kw=None):
    return kh * (kw or kh) * cin * cout + 2 * cout

  def up(cin, cout):
    return cin * cout + cout

  stem = (conv(3, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 80, 1) + conv(80, 192, 3)
          + conv(192, 256, 3))
  ir_a = (conv(256, 32, 1) + conv(256, 32, 1) + conv(32, 32, 3) + conv(256, 32, 1) + conv(32, 32, 3)
          + conv(32, 32, 3) + up(3 * 32, 256))
  k, l, m, n = 192, 192, 256, 384
  red_a = conv(256, n, 3) + conv(256, k, 1) + conv(k, l, 3) + conv(l, m, 3)
  c17 = 256 + n + m
  ir_b = (conv(c17, 128, 1) + conv(c17, 128, 1) + conv(128, 128, 1, 7) + conv(128, 128, 7, 1)
          + up(2 * 128, c17))
  red_b = (conv(c17, 256, 1) + conv(256, 384, 3) + conv(c17, 256, 1) + conv(256, 256, 3)
           + conv(c17, 256, 1) + conv(256, 256, 3) + conv(256, 256, 3))
  c8 = c17 + 384 + 256 + 256
  ir_c = (conv(c8, 192, 1) + conv(c8, 192, 1) + conv(192, 192, 1, 3) + conv(192, 192, 3, 1)
          + up(2 * 192, c8))
  fc = c8 * num_classes + num_classes
  return stem + 5 * ir_a + red_a + 10 * ir_b + red_b + 5 * ir_c + fc


def test_inception_resnet_v1_parameter_count_equals_the_papers_tables():
  assert paper_inception_resnet_v1_params() == 22_756_328
  assert count('inception_resnet_v1') == paper_inception_resnet_v1_params()


@pytest.mark.parametrize('name,grid_width', [('inception_v4', 1024), ('inception_resnet_v1', 896),
                                             ('inception_resnet_v2', 1088)])
def test_aux_head_adds_exactly_tf_slims_head_on_the_17x17_grid(name, grid_width):
  # avgpool 5/3 → 1×1 ConvBN 128 → 5×5 ConvBN 768 → FC 1000
  head = (grid_width * 128 + 2 * 128) + (5 * 5 * 128 * 768 + 2 * 768) + (768 * 1000 + 1000)
  assert count(name, aux_logits=True) - count(name) == head


# ------------------------------------------------------------------------------------------------------
# Channel arithmetic and block layout


def test_inception_v4_grid_sizes_and_widths():
  s = shapes('inception_v4')
  assert s['conv2d_2b'] == (147, 147, 64)
  assert s['mixed_3a'] == (73, 73, 160)
  assert s['mixed_4a'] == (71, 71, 192)
  assert s['mixed_5a'] == (35, 35, 384)
  assert s['inception_a_4'] == (35, 35, 384)
  assert s['reduction_a'] == (17, 17, 1024)
  assert s['inception_b_7'] == (17, 17, 1024)
  assert s['reduction_b'] == (8, 8, 1536)
  assert s['inception_c_3'] == (8, 8, 1536)


def test_inception_resnet_v2_grid_sizes_and_widths():
  s = shapes('inception_resnet_v2')
  assert s['mixed_5b'] == (35, 35, 320)
  assert s['mixed_6a'] == (17, 17, 1088)
  assert s['mixed_7a'] == (8, 8, 2080)
  assert s['block8_10'] == (8, 8, 2080)
  assert s['conv2d_7b'] == (8, 8, 1536)


def test_inception_resnet_v1_grid_sizes_and_widths_follow_the_paper():
  s = shapes('inception_resnet_v1')
  assert s['conv2d_4b'] == (35, 35, 256)    # Figure 14
  assert s['mixed_6a'] == (17, 17, 896)     # 256 (pool) + n 384 + m 256
  assert s['mixed_7a'] == (8, 8, 1792)      # 896 (pool) + 384 + 256 + 256
  assert s['block8_5'] == (8, 8, 1792)
  assert 'conv2d_7b' not in s


@pytest.mark.parametrize('name,aux_after,repeats', [
    ('inception_v4', 'inception_b_7', {'inception_a_': 4, 'inception_b_': 7, 'inception_c_': 3}),
    ('inception_resnet_v1', 'block17_10', {'block35_': 5, 'block17_': 10, 'block8_': 5}),
    ('inception_resnet_v2', 'block17_20', {'block35_': 10, 'block17_': 20, 'block8_': 10}),
])
def test_every_module_is_a_top_level_block_and_aux_branches_off_the_last_17x17_one(name, aux_after, repeats):
  structure = block_structure(create_model(name), model_info(name).min_aux_input_size)
  assert structure.aux_branch == {'AuxLogits': aux_after}
  assert structure.order.index('AuxLogits') == structure.order.index(aux_after) + 1
  for prefix, n in repeats.items():
    blocks = [b for b in structure.trunk if b.startswith(prefix)]
    assert blocks == [f'{prefix}{i}' for i in range(1, n + 1)]


@pytest.mark.parametrize('name', NAMES)
def test_minimum_sizes_are_tight(name):
  info = model_info(name)
  assert (info.input_size, info.min_input_size, info.min_aux_input_size) == (299, 75, 107)
  assert info.num_aux_heads == 1
  # At 75 the 8×8 grid is 1×1: one pixel less and a VALID reduction would produce an empty map. At 107 the
  # 17×17 grid is 5×5, just what the auxiliary head's 5×5 average pool needs. The number of residual
  # blocks does not change the grid, so one per stage keeps this cheap.
  if name == 'inception_v4':
    grid17, grid8, overrides = 'reduction_a', 'reduction_b', {}
  else:
    grid17, grid8, overrides = 'mixed_6a', 'mixed_7a', {'repeats': (1, 1, 1)}
  assert shapes(name, info.min_input_size, **overrides)[grid8][:2] == (1, 1)
  assert shapes(name, info.min_aux_input_size, **overrides)[grid17][:2] == (5, 5)


@pytest.mark.parametrize('name,timm_gmacs', [('inception_v4', 12.28), ('inception_resnet_v2', 13.18)])
def test_multiply_adds_match_timm(name, timm_gmacs):
  # timm's figures also count one op per BN and ReLU output, about 0.2% on top of the convolutions.
  macs = summary(name, 299).macs
  assert macs / 1e9 == pytest.approx(timm_gmacs, rel=3e-3)
  assert macs / 1e9 < timm_gmacs


def test_paper_layout_of_inception_resnet_v2_is_a_configuration():
  s = shapes('inception_resnet_v2', stem=inception_v4.INCEPTION_V4_STEM, repeats=(5, 10, 5),
             final_linear_block=False, head_features=None)
  assert s['block35_5'] == (35, 35, 384)
  assert s['mixed_6a'] == (17, 17, 1152)   # 384 (pool) + n 384 + m 384
  assert s['block8_5'] == (8, 8, 2144)
  assert 'block8_6' not in s and 'conv2d_7b' not in s


# ------------------------------------------------------------------------------------------------------
# Residual scaling


TINY_TABLE = ((Conv('branch0', 4, 1),), (Conv('branch1_0', 3, 1), Conv('branch1_1', 5, 3)))


def tiny_block(**kw):
  block = ResidualBlock(TINY_TABLE, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  variables = block.init(jax.random.key(1), x)
  return block, variables, x


@pytest.mark.parametrize('scale', [0.17, 0.10, 0.20, 1.0])
def test_residual_block_adds_the_scaled_linear_up_projection_then_relu(scale):
  block, variables, x = tiny_block(scale=scale)
  params = variables['params']
  # Recompute independently: the branches as a plain Mixed module, then a 1×1 conv as a matmul.
  mixed = inception_v4.layers.Mixed(TINY_TABLE).apply(
      {'params': params['mixed'], 'batch_stats': variables['batch_stats']['mixed']}, x)
  assert mixed.shape[-1] == 4 + 5
  kernel, bias = params['conv2d']['conv']['kernel'], params['conv2d']['conv']['bias']
  assert kernel.shape == (1, 1, 9, 8)  # back to the trunk's width; a bias, no BN
  up = jnp.einsum('nhwc,cd->nhwd', mixed, kernel[0, 0]) + bias
  np.testing.assert_allclose(block.apply(variables, x), jax.nn.relu(x + scale * up), rtol=1e-5, atol=1e-5)


def test_residual_block_with_a_zero_up_projection_is_the_activation_of_its_input():
  block, variables, x = tiny_block(scale=0.17)
  zeroed = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if 'conv2d' in str(p[0]) else v, variables['params'])
  v = {**variables, 'params': zeroed}
  np.testing.assert_array_equal(block.apply(v, x), jax.nn.relu(x))
  linear = ResidualBlock(TINY_TABLE, scale=1.0, activation=None)
  np.testing.assert_array_equal(linear.apply(v, x), x)


def residual_settings(model):
  """(scale, has activation) of every residual block, recorded from an abstract forward pass."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, ResidualBlock) and context.method_name == '__call__':
      seen[m.name] = (m.scale, m.activation is not None)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
  with inception_v4.nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return seen


def test_residual_scales_per_stage_and_the_linear_last_block_of_v2():
  seen = residual_settings(create_model('inception_resnet_v2', aux_logits=False))
  assert len(seen) == 10 + 20 + 10
  assert {seen[f'block35_{i}'] for i in range(1, 11)} == {(0.17, True)}
  assert {seen[f'block17_{i}'] for i in range(1, 21)} == {(0.10, True)}
  assert {seen[f'block8_{i}'] for i in range(1, 10)} == {(0.20, True)}
  assert seen['block8_10'] == (1.0, False)

  seen = residual_settings(create_model('inception_resnet_v1', aux_logits=False, scale_b=0.3))
  assert len(seen) == 5 + 10 + 5
  assert {v for k, v in seen.items() if k.startswith('block17_')} == {(0.3, True)}
  assert {v for k, v in seen.items() if k.startswith('block8_')} == {(0.20, True)}
