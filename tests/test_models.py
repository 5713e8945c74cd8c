"""The model API every registered variant honours (DESIGN.md): shapes, gradients, aux heads, eval mode."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inception_jax import models
from inception_jax.models.blocks import block_of, block_structure

from tiny_config import TinyInception

CANONICAL = ['alexnet', 'bn_inception', 'googlenet', 'inception_resnet_v1', 'inception_resnet_v2',
             'inception_v1', 'inception_v2', 'inception_v3', 'inception_v4', 'lenet', 'nin', 'vgg11',
             'vgg16', 'xception']
NUM_CLASSES = 7
ALL = models.list_models()
WITH_AUX = [n for n in ALL if models.model_info(n).num_aux_heads]



# At Xception's smallest input (7 px) the exit flow runs on a 1×1 grid, where a 3×3 'SAME' depthwise
# convolution passes a per-channel shift of block12's output on unchanged and the next training-mode BN
# removes it: block12's BN offsets get exactly no gradient. At 39 px that grid is 2×2.
LARGER_INPUT = {'xception': 39}


def small_size(name):
  """The smallest input at which every head of the model runs and every parameter can get a gradient:
  keeps the real forward passes cheap."""
  info = models.model_info(name)
  return max(info.min_input_size, info.min_aux_input_size, LARGER_INPUT.get(name, 0))


def test_registry_lists_exactly_the_canonical_names_sorted():
  assert models.list_models() == CANONICAL


@pytest.mark.parametrize('alias,name', [('v1', 'inception_v1'), ('v2', 'inception_v2'),
                                        ('v3', 'inception_v3'), ('v4', 'inception_v4')])
def test_aliases(alias, name):
  assert models.resolve_name(alias) == name
  assert models.model_info(alias).name == name


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match='unknown model .inception_v9.*inception_v3.*xception'):
    models.create_model('inception_v9')


def test_unknown_option_is_a_value_error():
  with pytest.raises(ValueError, match='inception_v3: invalid option'):
    models.create_model('v3', no_such_option=1)


@pytest.mark.parametrize('name', ALL)
def test_full_size_shapes(name):
  info = models.model_info(name)
  model = models.create_model(name, num_classes=NUM_CLASSES)
  x = jax.ShapeDtypeStruct((2, info.input_size, info.input_size, 3), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.logits.shape == (2, NUM_CLASSES) and out.logits.dtype == jnp.float32
  assert out.aux_logits == ()
  out, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs=rngs, mutable=['batch_stats']), variables, x)
  assert [a.shape for a in out.aux_logits] == [(2, NUM_CLASSES)] * info.num_aux_heads


@pytest.mark.parametrize('name', ALL)
def test_input_below_minimum_is_a_clear_error_and_minimum_works(name):
  info = models.model_info(name)
  model = models.create_model(name, aux_logits=False)
  lo = info.min_input_size
  jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, lo, lo, 3))))
  with pytest.raises(ValueError, match=f'smaller than the minimum {lo}×{lo}'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, lo - 1, lo - 1, 3))))


@pytest.mark.parametrize('name', ALL)
def test_aux_heads_run_at_the_advertised_minimum(name):
  info = models.model_info(name)
  size = info.min_aux_input_size
  model = models.create_model(name)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)
  out, _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs=rngs, mutable=['batch_stats']), variables, x)
  assert len(out.aux_logits) == info.num_aux_heads


def test_compute_dtype_and_param_dtype():
  x = jax.ShapeDtypeStruct((1, 107, 107, 3), jnp.float32)
  model = models.create_model('v3', dtype=jnp.bfloat16)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype('float32')}
  assert jax.eval_shape(lambda v, x: model.apply(v, x), v, x).logits.dtype == jnp.float32
  model = models.create_model('v3', param_dtype=jnp.bfloat16)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert {a.dtype for a in jax.tree.leaves(v['params'])} == {jnp.dtype('bfloat16')}


# ------------------------------------------------------------------------------------------------------
# Real forward/backward passes at each model's smallest size. One vjp gives the gradient of every head's
# loss separately; the tests below read them.


def run_model(name, kernels='auto'):
  """Three compiled programs per model (XLA compiles them in about two thirds of the time it takes for
  them as one): init (shared by both `kernels` settings); the per-head loss gradients (main first) from one training-mode forward pass; the
  eval-mode logits, run three times: for the batch with two different dropout keys, and for the batch with
  its second example replaced."""
  size = small_size(name)
  model = models.create_model(name, num_classes=NUM_CLASSES, kernels=kernels)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  labels = jnp.array([1, 5])
  # Initialised by the `lax` formulation for both settings (the variables are the same; the program, the
  # same for both, is compiled once and then found in the suite's compilation cache).
  plain = models.create_model(name, num_classes=NUM_CLASSES, kernels='lax')
  variables = jax.jit(lambda x: plain.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x,
                                           train=True))(x)

  @jax.jit
  def gradients(variables, x):
    params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

    def losses(params):
      out, _ = model.apply({'params': params, **state}, x, train=True, rngs={'dropout': jax.random.key(3)},
                           mutable=['batch_stats'])
      heads = (out.logits,) + tuple(out.aux_logits)
      return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(h, labels).mean() for h in heads])

    values, pullback = jax.vjp(losses, params)
    return values, jax.vmap(pullback)(jnp.eye(values.shape[0]))[0]

  @jax.jit
  def eval_pass(variables, x, key):
    return model.apply(variables, x, train=False, rngs={'dropout': key})

  values, per_head = gradients(variables, x)
  # Eval must ignore dropout keys: two different ones give the same logits.
  eval_batch = eval_pass(variables, x, jax.random.key(4))
  eval_again = eval_pass(variables, x, jax.random.key(5))
  eval_other = eval_pass(variables, x.at[1].set(3 * x[1] + 1), jax.random.key(4))
  # Checked in NumPy: a jnp operation per parameter would compile hundreds of small programs.
  return size, jax.device_get((values, per_head, eval_batch, eval_other, eval_again))


def block_norms(grads, head):
  """Largest |gradient| per block for one head; and per leaf, to spot any parameter without gradient."""
  per_block, per_leaf = {}, {}
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    m = float(np.max(np.abs(g[head])))
    per_leaf['/'.join(str(getattr(k, 'key', k)) for k in path)] = m
    per_block[block_of(path)] = max(per_block.get(block_of(path), 0.0), m)
  return per_block, per_leaf


# The three largest networks compile for minutes; they are built from the same layers as the rest, whose
# two formulations are checked on every other model (and layer by layer in test_kernels.py), so they run
# once, with the formulation accelerators use.
LARGEST = ('inception_v4', 'inception_resnet_v1', 'inception_resnet_v2')
REAL_PASSES = [pytest.param(n, k, marks=() if n == 'lenet' else pytest.mark.slow)
               for n in ALL for k in ('lax', 'cpu') if not (n in LARGEST and k == 'cpu')]


@pytest.mark.parametrize('name,kernels', REAL_PASSES)
def test_real_passes(name, kernels):
  """One compiled program per model and `kernels` setting (compiling dominates), checked for each
  property below."""
  size, (values, per_head, out, other, again) = run_model(name, kernels)
  check_forward_backward_is_finite_and_every_parameter_gets_a_gradient(values, per_head)
  if name in WITH_AUX:
    check_aux_head_gradient_reaches_upstream_blocks_only(name, size, per_head)
  check_eval_mode_is_deterministic_and_uses_running_statistics(out, other, again)


def check_forward_backward_is_finite_and_every_parameter_gets_a_gradient(values, per_head):
  assert np.all(np.isfinite(values))
  total = jax.tree.map(lambda g: g.sum(0), per_head)  # d(main + sum of aux)/dparams
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(total))
  _, per_leaf = block_norms(jax.tree.map(lambda g: g[None], total), 0)
  starved = [k for k, m in per_leaf.items() if m == 0.0]
  assert not starved, f'parameters without gradient: {starved}'


def check_aux_head_gradient_reaches_upstream_blocks_only(name, size, per_head):
  structure = block_structure(models.create_model(name, num_classes=NUM_CLASSES), size)
  heads = list(structure.aux_branch)
  assert len(heads) == models.model_info(name).num_aux_heads
  for i, head in enumerate(heads, start=1):
    per_block, per_leaf = block_norms(per_head, i)
    upstream = set(structure.upstream_of(head))
    for leaf, m in per_leaf.items():
      block = leaf.split('/')[0]
      if block in upstream or block == head:
        assert m > 0, f'{head} loss gives no gradient to {leaf}, which is upstream of its branch point'
      else:
        assert m == 0, f'{head} loss reaches {leaf}, downstream of its branch point or another head'
  main_blocks, _ = block_norms(per_head, 0)
  assert all(main_blocks[h] == 0 for h in heads), 'the main loss must not reach the aux heads'
  assert all(main_blocks[b] > 0 for b in structure.trunk if b in main_blocks)


def check_eval_mode_is_deterministic_and_uses_running_statistics(out, other, again):
  assert out.aux_logits == ()
  np.testing.assert_array_equal(out.logits, again.logits)
  # With running statistics an example's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(other.logits[0], out.logits[0], rtol=1e-4, atol=1e-5)
  assert not np.allclose(other.logits[1], out.logits[1], rtol=1e-4, atol=1e-5)


# --- activation checkpointing per block (config remat='blocks') -------------------------------------------

WITH_BLOCKS = ['bn_inception', 'googlenet', 'inception_resnet_v1', 'inception_resnet_v2', 'inception_v1',
               'inception_v2', 'inception_v3', 'inception_v4', 'xception']


def test_every_inception_family_model_can_rematerialise_its_blocks():
  assert [n for n in ALL if hasattr(models.create_model(n), 'remat_blocks')] == WITH_BLOCKS


@pytest.mark.parametrize('name', WITH_BLOCKS)
def test_block_remat_keeps_every_variable_name_and_shape(name):
  # Checkpoints and converted weights load either way.
  x = jax.ShapeDtypeStruct((1, small_size(name), small_size(name), 3), jnp.float32)
  shapes = {}
  for remat in (False, True):
    model = models.create_model(name, num_classes=NUM_CLASSES, remat_blocks=remat)
    variables = jax.eval_shape(lambda x: model.init({'params': jax.random.key(0)}, x), x)
    shapes[remat] = jax.tree.map(lambda a: a.shape, variables)
  assert shapes[True] == shapes[False]


@pytest.mark.slow
def test_block_remat_computes_the_same_loss_gradients_and_statistics():
  x = jax.random.normal(jax.random.key(1), (4, 18, 18, 3))
  results = []
  for remat in (False, True):
    net = TinyInception(num_classes=5, remat_blocks=remat)  # an Inception module and a residual block
    variables = net.init(jax.random.key(0), x)

    def loss(params):
      out, updates = net.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(out.logits ** 2), updates['batch_stats']

    results.append(jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params']))
  np.testing.assert_allclose(results[0][0][0], results[1][0][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), results[0], results[1])
