"""Inception-v2/v3 (Rethinking): exact sizes of the reference implementations and the Table 3 switches."""

import jax
import jax.numpy as jnp
import pytest

from inception_jax.models import create_model
from inception_jax.summary import summarize


def count(model, size=299, collections=('params',)):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  return sum(x.size for c in collections for x in jax.tree.leaves(v.get(c, {})))


@pytest.mark.parametrize('aux,expected', [(False, 23_834_568), (True, 27_161_264)])
def test_v3_parameter_count_equals_torchvision(aux, expected):
  assert count(create_model('inception_v3', aux_logits=aux)) == expected


def test_v3_keras_counting_without_bn_scale_plus_running_statistics():
  model = create_model('inception_v3', aux_logits=False, bn_scale=False)
  assert count(model, collections=('params', 'batch_stats')) == 23_851_784


def test_v2_differs_from_v3_only_in_the_stem_and_the_aux_head_fc_layer():
  v3_stem = (3 * 3 * 3 * 32 + 2 * 32) + (3 * 3 * 32 * 32 + 2 * 32) + (3 * 3 * 32 * 64 + 2 * 64)
  v2_stem = 7 * 7 * 3 * 64 + 2 * 64
  bn_aux_fc, plain_aux_fc = 2 * 768, 768  # BN beta+gamma vs a bias
  v3, v2 = count(create_model('v3')), count(create_model('v2'))
  assert v3 - v2 == (v3_stem - v2_stem) + (bn_aux_fc - plain_aux_fc)


def test_7x7_stem_lands_on_the_same_grid_as_the_factorized_stem():
  rows = {r.name: r for r in summarize(create_model('v2'), (1, 299, 299, 3)).rows}
  assert rows['Conv2d_1a_7x7'].output_shape == (147, 147, 64)
  rows3 = {r.name: r for r in summarize(create_model('v3'), (1, 299, 299, 3)).rows}
  assert rows3['Conv2d_2b_3x3'].output_shape == (147, 147, 64)


def test_grid_sizes_and_widths_of_the_three_stages():
  rows = {r.name: r.output_shape for r in summarize(create_model('v3'), (1, 299, 299, 3)).rows}
  assert rows['Mixed_5d'] == (35, 35, 288)
  assert rows['Mixed_6e'] == (17, 17, 768)
  assert rows['Mixed_7c'] == (8, 8, 2048)


def test_bn_auxiliary_switch_puts_batch_norm_on_the_aux_fc_layer():
  def aux_conv(model):
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3)), train=True))
    return set(v['params']['AuxLogits']['conv'])

  assert aux_conv(create_model('v3')) == {'conv', 'bn'}
  assert aux_conv(create_model('v3', aux_bn=False)) == {'conv'}
  assert aux_conv(create_model('v2')) == {'conv'}


def test_unknown_stem_is_rejected():
  model = create_model('v3', stem='5x5')
  with pytest.raises(ValueError, match="stem must be '3x3'"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))
