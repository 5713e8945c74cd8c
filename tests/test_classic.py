"""Classic baselines: exact sizes of torchvision / d2l, minimum inputs, and a real LeNet training step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import classic  # noqa: F401  (registers the models)
from inception_jax.models.registry import create_model, model_info

NAMES = ('lenet', 'alexnet', 'vgg11', 'vgg16', 'nin')


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _spec(size, channels=3, batch=1):
  return jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)


def _shapes(name, size, channels=3, **kwargs):
  model = create_model(name, **kwargs)
  return jax.eval_shape(model.init, jax.random.key(0), _spec(size, channels))


def _conv(k, cin, cout):
  return k * k * cin * cout + cout


def _dense(cin, cout):
  return cin * cout + cout


def lenet_params(channels, num_classes):
  """d2l's LeNet-5 table: at 28×28 the second pool leaves 5×5×16."""
  return (_conv(5, channels, 6) + _conv(5, 6, 16) + _dense(5 * 5 * 16, 120) + _dense(120, 84)
          + _dense(84, num_classes))


def nin_params(channels, num_classes):
  """d2l's NiN table: each block is a k×k conv and two 1×1 convs at the same width."""
  total, cin = 0, channels
  for features, k in ((96, 11), (256, 5), (384, 3), (num_classes, 3)):
    total += _conv(k, cin, features) + 2 * _conv(1, features, features)
    cin = features
  return total


@pytest.mark.parametrize('name,expected', [
    ('alexnet', 61_100_840), ('vgg11', 132_863_336), ('vgg16', 138_357_544)])
def test_torchvision_param_counts(name, expected):
  assert _count(_shapes(name, 224)) == expected


@pytest.mark.parametrize('channels,num_classes', [(1, 10), (3, 1000)])
def test_lenet_param_count(channels, num_classes):
  count = _count(_shapes('lenet', 28, channels, num_classes=num_classes))
  assert count == lenet_params(channels, num_classes)


@pytest.mark.parametrize('channels,num_classes', [(1, 10), (3, 1000)])
def test_nin_param_count(channels, num_classes):
  assert _count(_shapes('nin', 224, channels, num_classes=num_classes)) == nin_params(channels, num_classes)


@pytest.mark.parametrize('name', NAMES)
def test_input_sizes(name):
  info = model_info(name)
  assert info.input_size == (28 if name == 'lenet' else 224)
  assert info.num_aux_heads == 0
  model = create_model(name, num_classes=5)
  for size in (info.input_size, info.min_input_size):
    variables = jax.eval_shape(model.init, jax.random.key(0), _spec(size))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, _spec(size, batch=2))
    assert out.logits.shape == (2, 5) and out.logits.dtype == jnp.float32 and out.aux_logits == ()
  with pytest.raises(ValueError, match='smaller than the minimum'):
    jax.eval_shape(model.init, jax.random.key(0), _spec(info.min_input_size - 1))


@pytest.mark.parametrize('name', ('alexnet', 'vgg11'))
def test_adaptive_pool_makes_head_size_independent(name):
  assert _count(_shapes(name, 224)) == _count(_shapes(name, 97))


def test_block_names():
  params = _shapes('vgg11', 32)['params']
  assert set(params) == {'block1_conv1', 'block2_conv1', 'block3_conv1', 'block3_conv2', 'block4_conv1',
                         'block4_conv2', 'block5_conv1', 'block5_conv2', 'fc1', 'fc2', 'fc'}
  assert set(_shapes('nin', 224)['params']) == {'nin1', 'nin2', 'nin3', 'nin4'}


def test_lenet_activation_switch():
  with pytest.raises(ValueError, match='activation'):
    create_model('lenet', activation='softplus')
  for act in ('sigmoid', 'relu', 'tanh'):
    assert _count(_shapes('lenet', 28, 1, num_classes=10, activation=act)) == lenet_params(1, 10)


def test_lenet_forward_backward():
  model = create_model('lenet', num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)).astype(np.float32))
  labels = jnp.array([0, 3, 7, 9])
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert set(variables['params']) == {'conv1', 'conv2', 'fc1', 'fc2', 'fc'}

  def loss_fn(params):
    logits = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(1)}).logits
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert bool(jnp.isfinite(loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.all(jnp.isfinite(g))), jax.tree_util.keystr(path)
    assert float(jnp.max(jnp.abs(g))) > 0, jax.tree_util.keystr(path)


def test_nin_logits_are_pooled_class_maps():
  model = create_model('nin', num_classes=10)
  variables = jax.eval_shape(model.init, jax.random.key(0), _spec(224))
  assert variables['params']['nin4']['cccp2']['conv']['kernel'].shape == (1, 1, 10, 10)
