"""The CPU formulations (the `cpu` side of the `kernels` switch) compute exactly what `lax`, flax and optax
compute, gradients included; only the operations XLA:CPU runs differ."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from inception_jax import kernels, xla_cpu, xla_gpu
from inception_jax.models import layers

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv_ops(fn, *args):
  """The convolution and product primitives `fn` uses, also inside custom_vjp and other nested calls."""
  def primitives(jaxpr):
    for e in jaxpr.eqns:
      yield e.primitive.name
      for value in e.params.values():
        inner = getattr(value, 'jaxpr', value)
        if hasattr(inner, 'eqns'):
          yield from primitives(inner)
  return set(primitives(jax.make_jaxpr(fn)(*args).jaxpr)) & {'conv_general_dilated', 'dot_general'}


# (input shape, kernel shape, strides, padding, the primitive the CPU path uses)
CONV_CASES = [
    ((2, 7, 7, 12), (1, 1, 12, 5), (1, 1), 'SAME', 'dot_general'),      # 1×1: a product
    ((2, 7, 7, 12), (1, 1, 12, 5), (2, 2), 'VALID', 'dot_general'),     # strided 1×1
    ((2, 1, 1, 12), (3, 3, 12, 5), (1, 1), 'SAME', 'dot_general'),      # 1×1 grid: the centre tap only
    ((2, 1, 1, 12), (1, 3, 12, 5), (1, 1), 'SAME', 'dot_general'),
    ((2, 3, 3, 12), (1, 7, 12, 5), (1, 1), 'SAME', 'dot_general'),      # taps beyond the grid dropped
    ((2, 5, 5, 12), (3, 3, 12, 5), (2, 2), 'VALID', 'dot_general'),     # small output grid, strided
    ((2, 11, 11, 3), (3, 3, 3, 8), (2, 2), 'VALID', 'dot_general'),     # RGB stem: few values a window
    ((2, 9, 9, 12), (3, 3, 12, 5), (1, 1), 'VALID', 'conv_general_dilated'),  # padded, then cut
    ((2, 10, 10, 12), (3, 3, 12, 5), (2, 2), 'VALID', 'conv_general_dilated'),
    ((2, 9, 9, 12), (3, 3, 12, 5), (1, 1), 'SAME', 'conv_general_dilated'),
    ((2, 9, 9, 12), (5, 5, 12, 5), (1, 1), ((1, 2), (0, 3)), 'conv_general_dilated'),
    ((2, 3, 3, 12), (3, 3, 12, 5), (1, 1), ((1, 1), (1, 1)), 'dot_general'),  # explicit padding
    # Rows and columns (the factorised n×n): the convolution, kernel gradient tap by tap.
    ((2, 9, 9, 12), (7, 1, 12, 5), (1, 1), 'SAME', 'conv_general_dilated'),
    ((2, 9, 8, 12), (1, 7, 12, 5), (1, 1), 'SAME', 'conv_general_dilated'),
    ((2, 9, 9, 12), (3, 1, 12, 5), (1, 1), 'VALID', 'conv_general_dilated'),
    ((2, 9, 9, 12), (1, 3, 12, 5), (1, 1), ((2, 0), (1, 1)), 'conv_general_dilated'),
    ((2, 10, 10, 12), (3, 1, 12, 5), (2, 2), 'SAME', 'conv_general_dilated'),  # strided: all `lax`
]


def _equals_lax_with_gradients(x_shape, k_shape, strides, padding):
  """Compares our convolution with `lax`'s, value and both gradients, in float64 (call under
  `jax.enable_x64`); returns it with its inputs and the cotangent used."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape))
  k = jnp.asarray(rng.normal(size=k_shape))

  def ours(x, k):
    return xla_cpu.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)

  def ref(x, k):
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)

  y, vjp = jax.vjp(ours, x, k)
  y_ref, vjp_ref = jax.vjp(ref, x, k)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
  cotangent = jnp.asarray(rng.normal(size=y.shape))
  for got, want in zip(vjp(cotangent), vjp_ref(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  return ours, x, k, cotangent


@pytest.mark.parametrize('x_shape,k_shape,strides,padding,primitive', CONV_CASES)
def test_conv_equals_lax_with_gradients(x_shape, k_shape, strides, padding, primitive):
  with jax.enable_x64(True):
    ours, x, k, _ = _equals_lax_with_gradients(x_shape, k_shape, strides, padding)
    assert _conv_ops(ours, x, k) == {primitive}


def test_grouped_convolutions_keep_lax():
  x, k = jnp.ones((2, 3, 3, 12)), jnp.ones((3, 3, 1, 12))
  fn = lambda x, k: xla_cpu.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=NHWC,
                                                 feature_group_count=12)
  assert _conv_ops(fn, x, k) == {'conv_general_dilated'}
  np.testing.assert_allclose(fn(x, k)[0, 1, 1], 9.0)


@pytest.mark.parametrize('window,strides,padding', [
    (3, 2, 'VALID'), (3, 1, 'SAME'), (3, 2, 'SAME'), (2, 2, 'VALID'), (3, 2, 1), ((1, 3), 1, 'SAME')])
def test_max_pool_gradient_equals_lax_even_with_ties(window, strides, padding):
  # Small integers after a ReLU: most windows hold several equal maxima (zeros), as in a real network.
  x = jnp.asarray(np.maximum(np.random.default_rng(1).integers(-3, 3, size=(2, 9, 8, 4)), 0), jnp.float32)
  win, st = layers._pair(window), layers._pair(strides)
  pads = layers._explicit_pool_padding(x, win, st, padding, False)
  pads = lax.padtype_to_pads(x.shape[1:3], win, st, pads) if isinstance(pads, str) else pads

  def ref(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *win, 1), (1, *st, 1), ((0, 0), *pads, (0, 0)))

  ours = lambda x: layers.max_pool(x, window, strides, padding)
  y, vjp = jax.vjp(ours, x)
  y_ref, vjp_ref = jax.vjp(ref, x)
  np.testing.assert_array_equal(y, y_ref)
  cotangent = jnp.asarray(np.random.default_rng(2).normal(size=y.shape), jnp.float32)
  np.testing.assert_allclose(vjp(cotangent)[0], vjp_ref(cotangent)[0], rtol=1e-6, atol=1e-6)
  assert float(jnp.sum(ours(x) == 0)) > 0  # ties really occur


@pytest.mark.parametrize('x_shape,padding', [((3, 37, 37, 4), 'SAME'), ((3, 38, 38, 4), 'VALID')])
def test_large_grids_sum_the_kernel_gradient_over_slices_of_the_batch(x_shape, padding):
  with jax.enable_x64(True):
    ours, x, k, cotangent = _equals_lax_with_gradients(x_shape, (3, 3, 4, 5), (1, 1), padding)
    out = jax.eval_shape(ours, x, k).shape
    assert out[1] * out[2] >= xla_cpu.KERNEL_GRAD_MIN_CELLS
    # The compiled backward pass: one convolution for the input gradient, one per image for the kernel's.
    backward = jax.jit(lambda x, k, c: jax.vjp(ours, x, k)[1](c)).lower(x, k, cotangent).compile().as_text()
    assert backward.count(' convolution(') == 1 + x_shape[0]


@pytest.mark.parametrize('k_shape,strides,kernel_grad_convolutions', [
    ((7, 1, 12, 5), (1, 1), 0), ((1, 7, 12, 5), (1, 1), 0), ((3, 1, 12, 5), (1, 1), 0),
    ((3, 1, 12, 5), (2, 2), 1), ((3, 3, 12, 5), (1, 1), 1)])
def test_rows_and_columns_take_their_kernel_gradient_tap_by_tap(k_shape, strides, kernel_grad_convolutions):
  x_shape = (2, 9, 9, 12)
  with jax.enable_x64(True):
    ours, x, k, cotangent = _equals_lax_with_gradients(x_shape, k_shape, strides, 'SAME')
    # The compiled backward pass: one convolution for the input gradient; a k×1 or 1×k kernel's gradient
    # as a matrix product over the cells of every tap, any other's as a convolution.
    backward = jax.jit(lambda x, k, c: jax.vjp(ours, x, k)[1](c)).lower(x, k, cotangent).compile().as_text()
    assert backward.count(' convolution(') == 1 + kernel_grad_convolutions


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('use_scale', [True, False])
@pytest.mark.parametrize('batch_norm', [xla_cpu.BatchNorm, xla_gpu.BatchNorm], ids=['cpu', 'gpu'])
def test_batch_norm_equals_flax_in_values_running_statistics_and_gradients(batch_norm, dtype, use_scale):
  # The cpu BatchNorm writes its training gradient out, the gpu one normalises in the compute dtype; each
  # must be flax's BatchNorm to rounding: outputs, the running averages, and gradients with respect to the
  # input, the parameters, and (through the running averages) the batch statistics.
  import flax.linen as nn
  kwargs = dict(momentum=0.9, epsilon=1e-3, use_scale=use_scale, dtype=dtype)
  ours, theirs = batch_norm(**kwargs), nn.BatchNorm(**kwargs)
  x = (jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 3 + 1).astype(dtype)
  variables = theirs.init(jax.random.key(1), x, use_running_average=False)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x, use_running_average=False))
          == jax.tree.map(jnp.shape, variables))
  params = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.key(2), p.shape), variables['params'])
  weights = jax.random.normal(jax.random.key(3), x.shape)

  def loss(module, params, x):
    y, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              use_running_average=False, mutable=['batch_stats'])
    stats = updates['batch_stats']
    return jnp.sum(y.astype(jnp.float32) * weights) + 3 * jnp.sum(stats['mean']) + 5 * jnp.sum(stats['var']), (
        y, stats)

  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  results = [jax.value_and_grad(functools.partial(loss, m), argnums=(0, 1), has_aux=True)(params, x)
             for m in (ours, theirs)]
  (_, (y, _)), _ = results[0]
  assert y.dtype == results[1][0][1][0].dtype == dtype
  if batch_norm is xla_gpu.BatchNorm and dtype == jnp.bfloat16:
    # Normalised in bfloat16 by design: each array within bfloat16's rounding of flax's float32 arithmetic
    # as a whole (a relative error of a few parts in a thousand per operation), not element by element.
    def close(a, b):
      a, b = np.float64(np.float32(a)), np.float64(np.float32(b))
      assert np.linalg.norm(a - b) <= 0.02 * np.linalg.norm(b) + 1e-6
    jax.tree.map(close, *results)
  else:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=tol, atol=tol),
                 *results)
  evaluated = [m.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, use_running_average=True)
               for m in (ours, theirs)]
  np.testing.assert_allclose(np.float32(evaluated[0]), np.float32(evaluated[1]), rtol=tol, atol=tol)


def test_the_gpu_batch_norm_normalises_in_the_compute_dtype():
  """Under bfloat16 the activation is multiplied and shifted in bfloat16 (flax's BatchNorm does it in
  float32 and casts at the end); only the statistics are float32."""
  x = jnp.ones((4, 5, 5, 6), jnp.bfloat16)

  def elementwise_dtypes(module):
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, use_running_average=False, mutable=['batch_stats'])[0])(
        variables, x).jaxpr
    return {str(e.outvars[0].aval.dtype) for e in jaxpr.eqns
            if e.primitive.name in ('mul', 'add', 'sub') and e.outvars[0].aval.shape == x.shape}

  import flax.linen as nn
  assert elementwise_dtypes(xla_gpu.BatchNorm(dtype=jnp.bfloat16)) == {'bfloat16'}
  assert 'float32' in elementwise_dtypes(nn.BatchNorm(dtype=jnp.bfloat16))


@pytest.mark.parametrize('impl', [kernels.CPU, kernels.LAX], ids=['cpu', 'lax'])
def test_squared_norms_are_per_leaf_and_in_leaf_order(impl):
  # The CPU's sums small leaves together (one segment sum) and large ones alone; the result must not show it.
  squared_norms = impl.squared_norms
  rng = np.random.default_rng(0)
  big = xla_cpu.SMALL_LEAF_SIZE + 5
  tree = {'a': rng.normal(size=(3,)), 'b': rng.normal(size=(big,)), 'c': np.float32(2.0),
          'd': rng.normal(size=(2, 4)), 'e': rng.normal(size=(big // 8, 8)), 'f': np.zeros((0,))}
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  tree['g'] = jnp.arange(4, dtype=jnp.bfloat16)
  expected = [np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)]
  got = jax.jit(squared_norms)(tree)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # A NaN shows in its own leaf's entry only (the train step names the first non-finite gradient by it).
  tree['d'] = tree['d'].at[1, 2].set(jnp.nan)
  finite = np.isfinite(jax.jit(squared_norms)(tree))
  np.testing.assert_array_equal(finite, [k != 'd' for k in sorted(tree)])
  assert squared_norms({}).shape == (0,)


@pytest.mark.parametrize('scale', [0.01, 100.0])   # below and above the threshold
def test_clip_by_global_norm_equals_optax(scale):
  rng = np.random.default_rng(1)
  grads = {'w': jnp.asarray(rng.normal(size=(40, 30)) * scale, jnp.float32),
           'b': jnp.asarray(rng.normal(size=(30,)) * scale, jnp.float32)}
  ours, _ = xla_cpu.clip_by_global_norm(2.0).update(grads, optax.EmptyState())
  theirs, _ = optax.clip_by_global_norm(2.0).update(grads, optax.EmptyState())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)
  norm = float(optax.tree.norm(ours))
  assert norm == pytest.approx(min(2.0, float(optax.tree.norm(grads))), rel=1e-5)
