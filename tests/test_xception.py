"""Xception: exact sizes of the reference implementations, the ablation switches, the 36-layer structure."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import xception  # noqa: F401  (registers the model)
from inception_jax.models.registry import create_model, model_info

# Separable convolutions' (in, out) features in forward order (Figure 5 of the paper), and the projection
# shortcuts of the four modules that change shape.
SEPARABLE = ([(64, 128), (128, 128), (128, 256), (256, 256), (256, 728), (728, 728)]
             + [(728, 728)] * 24 + [(728, 728), (728, 1024), (1024, 1536), (1536, 2048)])
SHORTCUTS = [(64, 128), (128, 256), (256, 728), (728, 1024)]


def _spec(size, batch=1):
  return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(size=299, num_classes=1000, **overrides):
  model = create_model('xception', num_classes=num_classes, **overrides)
  return jax.eval_shape(model.init, jax.random.key(0), _spec(size))


def _cheap_variables(shapes, seed=0):
  """Random variables with init-like scales, drawn in numpy: jax's RNG on 22M weights is slow on CPU."""
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ('bias', 'mean'):
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.standard_normal(leaf.shape, dtype=np.float32) / np.sqrt(fan_in))

  return jax.tree_util.tree_map_with_path(make, shapes)


@pytest.fixture(scope='module')
def small_variables():
  return _cheap_variables(_shapes(32, num_classes=10))


def test_param_counts_match_timm_and_keras():
  variables = _shapes()
  assert _count(variables['params']) == 22_855_952            # timm legacy_xception
  assert _count(variables) == 22_910_480                      # keras: + BN moving mean and variance


def test_param_count_from_layer_table():
  bn = lambda c: 2 * c  # scale and offset
  expected = (3 * 3 * 3 * 32 + bn(32) + 3 * 3 * 32 * 64 + bn(64)
              + sum(9 * cin + cin * cout + bn(cout) for cin, cout in SEPARABLE)
              + sum(cin * cout + bn(cout) for cin, cout in SHORTCUTS)
              + 2048 * 1000 + 1000)
  assert _count(_shapes()['params']) == expected


def test_no_residual_removes_exactly_the_shortcut_projections():
  with_res = _shapes()['params']
  without = _shapes(residual=False)['params']
  shortcut_params = sum(cin * cout + 2 * cout for cin, cout in SHORTCUTS)
  assert _count(with_res) - _count(without) == shortcut_params

  paths = lambda t: {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(t)}
  removed = paths(with_res) - paths(without)
  assert paths(without) <= paths(with_res)
  assert removed and all("['skip']" in p for p in removed)


@pytest.mark.parametrize('mid_activation', ['relu', 'elu'])
def test_mid_activation_keeps_params(mid_activation):
  assert _count(_shapes(mid_activation=mid_activation)) == _count(_shapes())


def test_mid_activation_changes_outputs(small_variables):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 32, 32, 3), dtype=np.float32))

  def logits(mid_activation):
    model = create_model('xception', num_classes=10, mid_activation=mid_activation)
    return jax.jit(lambda v, x: model.apply(v, x).logits)(small_variables, x)

  outs = {a: logits(a) for a in (None, 'relu', 'elu')}
  for a, y in outs.items():
    assert y.shape == (1, 10) and bool(jnp.all(jnp.isfinite(y))), a
  assert not np.allclose(outs[None], outs['relu'])
  assert not np.allclose(outs['relu'], outs['elu'])


def test_invalid_mid_activation_raises():
  with pytest.raises(ValueError, match='mid_activation'):
    create_model('xception', mid_activation='tanh')


@pytest.mark.slow
def test_torch_padding_style_differs_from_same_only_on_even_grids():
  """timm pads the strided pools by one; at 299 px the 74×74 grid (even) is pooled differently."""
  same, torch_style = _shapes(), _shapes(padding_style='torch')
  assert jax.tree.map(lambda a: a.shape, same) == jax.tree.map(lambda a: a.shape, torch_style)
  model = create_model('xception', num_classes=4)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 75, 75, 3), dtype=np.float32))
  apply = lambda m: m.apply(variables, x).logits  # noqa: E731
  # 75 px: grids 37 → 35 (odd: both pad (1, 1)) → 18 (even: SAME pads (0, 1), timm (1, 1)).
  assert not np.allclose(apply(model), apply(create_model('xception', num_classes=4, padding_style='torch')))
  with pytest.raises(ValueError, match="padding_style must be 'same' \\(Keras\\) or 'torch'"):
    create_model('xception', padding_style='tf')


def test_36_convolutional_layers():
  """Paper §3: 36 conv layers; a separable conv counts once; shortcuts and the classifier do not count."""
  convs = 0
  for path, _ in jax.tree_util.tree_leaves_with_path(_shapes()['params']):
    names = [k.key for k in path]
    if names[-1] != 'kernel' or names[0] == 'fc' or 'skip' in names or 'depthwise' in names:
      continue
    convs += 1
  assert convs == 36


def test_blocks_and_grid():
  params = _shapes()['params']
  assert set(params) == {'conv1', 'conv2', 'conv3', 'conv4', 'fc'} | {f'block{i}' for i in range(1, 13)}
  # Depthwise kernels are k×k×1×C (depth multiplier 1).
  assert params['block1']['sepconv1']['conv']['depthwise']['kernel'].shape == (3, 3, 1, 64)


def _equations(jaxpr):
  """Every equation, those inside nested calls (jit, custom gradients) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for inner in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(inner, 'jaxpr', inner)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


def test_macs_at_299():
  """Conv and dense multiply-adds at 299×299: ≈ 8.4 G (8.36 G counted here)."""
  model = create_model('xception')
  variables = _shapes()
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x).logits)(variables, _spec(299))
  macs = 0
  for eqn in _equations(jaxpr.jaxpr):
    if eqn.primitive.name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval.shape  # HWIO; I is 1 for depthwise
      macs += int(np.prod(eqn.outvars[0].aval.shape)) * kernel[0] * kernel[1] * kernel[2]
    elif eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      macs += int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))
  assert 8.3e9 < macs < 8.45e9


def test_input_sizes():
  info = model_info('xception')
  assert info.input_size == 299 and info.num_aux_heads == 0
  model = create_model('xception', num_classes=7)
  variables = _shapes(num_classes=7)
  for size in (299, info.min_input_size):
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, _spec(size, batch=2))
    assert out.logits.shape == (2, 7) and out.aux_logits == ()
  with pytest.raises(ValueError, match='smaller than the minimum'):
    jax.eval_shape(lambda v, x: model.apply(v, x), variables, _spec(info.min_input_size - 1))


def test_aux_logits_accepted_and_ignored():
  shapes = _shapes()
  assert _count(_shapes(aux_logits=True)) == _count(_shapes(aux_logits=False)) == _count(shapes)


def test_train_step_updates_batch_stats(small_variables):
  model = create_model('xception', num_classes=10, dropout_rate=0.5)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 32, 32, 3), dtype=np.float32))
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)},
                                           mutable=['batch_stats']))
  out, updates = train(small_variables, x)
  assert out.logits.shape == (2, 10) and out.aux_logits == ()
  assert bool(jnp.all(jnp.isfinite(out.logits)))
  old = small_variables['batch_stats']['conv1']['bn']['mean']
  assert not np.allclose(updates['batch_stats']['conv1']['bn']['mean'], old)
