"""The `cpu` side of the `kernels` switch (see `inception_jax.kernels`): convolution, max pooling,
BatchNorm's training gradient and the train step's per-array norms, written the way XLA:CPU runs or
compiles them fastest. Each computes what its `lax`/flax/optax counterpart computes (tested to float64
rounding); only the operations XLA runs differ.

Profiling the Inception-v3 train step on an x86 CPU (2 cores; batch 32 at 75 px, batch 16 at 299 px)
showed where XLA:CPU spends far more than the arithmetic needs:
- a convolution's kernel gradient runs at a fraction of its forward speed: a 1×1 convolution's forward +
  backward takes ~2.5× as long as the same products written as matrix products, and convolutions over tiny
  grids (a 1×3 kernel on a 1×1 grid) are slower still;
- unpadded ('VALID') convolutions take a much slower path than padded ones;
- max pooling's gradient (variadic reduce-window carrying argmax indices) costs ~4–20× its forward pass;
- on large grids (Inception-v3's 147×147 and 71×71 stem convolutions at 299 px) the kernel gradient slows
  down with the batch: per image it takes 6.4× as long at batch 16 as at batch 1 (69 vs 10.8 ms for the
  73×73, 80→192 convolution), so it is summed over slices of the batch;
- the kernel gradient of a k×1 kernel (a column: the factorised 7×7 and 3×3 of Inception-v3/v4 and
  Inception-ResNet) is several times slower than that of the same 1×k row (17×17 grid, 192→192, batch 16:
  forward and both gradients 82 ms for 7×1, 36 ms for 1×7), so both take it as one matrix product over
  the input cells of every tap (30 and 31 ms).
All are replaced here by formulations with the same results (up to float rounding) whose gradients XLA:CPU
handles well. Only the formulation changes: parameters, shapes and semantics are those of `lax`.
Nothing here asks which backend runs it; the switch decides where it is used.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from inception_jax import batch_norm

# k×k convolutions whose output grid has at most this many cells run as one matrix product over gathered
# windows. At batch 32, 3×3 grids and smaller win clearly; 7×7 is even and 17×17, 35×35 lose.
MATMUL_CONV_MAX_CELLS = 9
# So do convolutions whose windows hold at most this many values (an RGB stem: 3×3×3 = 27), which use the
# CPU's vector units poorly as convolutions (4.9 ms forward vs 1.1 as a product, batch 32 at 75 px).
MATMUL_CONV_MAX_DEPTH = 32
# Output grids larger than 35×35 get their kernel gradient one slice of the batch at a time, in at most
# this many slices (so many convolutions to compile; at batch 16, 147×147, 32→64: 521 ms in one piece,
# 136 ms in 16). At 35×35 and below one piece is as fast.
KERNEL_GRAD_MIN_CELLS = 36 * 36
KERNEL_GRAD_MAX_SLICES = 16


def _window_slice(x: jax.Array, i: int, j: int, out: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
  """The input cells that tap (i, j) of a window sees, one per output cell."""
  (oh, ow), (sh, sw) = out, strides
  return x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated` (same signature); 1×1 convolutions and those with small output grids are a gather of shifted input windows followed by one matrix product (whose gradients are matrix
  products too). Taps that only ever see padding are dropped: on a 1×1 grid a 3×3 kernel is its centre.
  Grouped or dilated convolutions and non-NHWC/HWIO layouts always take `lax`."""
  def default():
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)

  if feature_group_count != 1 or lhs.ndim != 4:
    return default()
  if any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    return default()
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
  if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
    return default()
  kh, kw = rhs.shape[:2]
  h, w = lhs.shape[1:3]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((h, w), (kh, kw), window_strides, padding)
  (pt, pb), (pl, pr) = padding
  sh, sw = window_strides
  out = ((h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1)
  if kh * kw > 1 and out[0] * out[1] > MATMUL_CONV_MAX_CELLS and kh * kw * lhs.shape[3] > MATMUL_CONV_MAX_DEPTH:
    if pt or pb or pl or pr:
      conv_padding = ((pt, pb), (pl, pr))
    else:
      # Unpadded ('VALID') convolutions take a path several times slower than padded ones (3.5 vs 25 ms
      # for Inception-v3's Conv2d_2a_3x3 at batch 32); one row and column of zeros the windows may not
      # reach select the fast one, and the extra outputs they add are cut off.
      conv_padding = ((0, 1), (0, 1))
    if out[0] * out[1] >= KERNEL_GRAD_MIN_CELLS:
      conv = _conv_sliced_kernel_grad
    elif min(kh, kw) == 1 and tuple(window_strides) == (1, 1):
      conv = _conv_kernel_grad_by_tap
    else:
      conv = _conv
    y = conv(lhs, rhs, tuple(window_strides), conv_padding, precision, preferred_element_type)
    return y[:, :out[0], :out[1], :]

  def sees_data(offset, pad, size, n, stride):
    return any(pad <= offset + o * stride < pad + size for o in range(n))

  taps = [(i, j) for i in range(kh) if sees_data(i, pt, h, out[0], sh)
          for j in range(kw) if sees_data(j, pl, w, out[1], sw)]
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt or pb or pl or pr else lhs
  patches = jnp.concatenate([_window_slice(x, i, j, out, window_strides) for i, j in taps], axis=-1)
  kernel = jnp.concatenate([rhs[i, j] for i, j in taps], axis=0)
  return lax.dot_general(patches, kernel, (((3,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)


def _conv(lhs, rhs, strides, padding, precision=None, preferred_element_type=None):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  precision=precision, preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_sliced_kernel_grad(lhs, rhs, strides, padding, precision, preferred_element_type):
  return _conv(lhs, rhs, strides, padding, precision, preferred_element_type)


def _conv_sliced_kernel_grad_fwd(lhs, rhs, strides, padding, precision, preferred_element_type):
  return _conv(lhs, rhs, strides, padding, precision, preferred_element_type), (lhs, rhs)


def _conv_sliced_kernel_grad_bwd(strides, padding, precision, preferred_element_type, residuals, dy):
  """The input gradient as `lax` computes it; the kernel gradient as a sum over slices of the batch,
  accumulated in float32 at least."""
  lhs, rhs = residuals
  total = jnp.promote_types(rhs.dtype, jnp.float32)

  def conv(x, w):
    return _conv(x, w, strides, padding, precision, preferred_element_type)

  dx = jax.vjp(lambda x: conv(x, rhs), lhs)[1](dy)[0]
  n = lhs.shape[0]
  size = -(-n // min(n, KERNEL_GRAD_MAX_SLICES))
  dw = sum(jax.vjp(lambda w: conv(lhs[i:i + size], w), rhs)[1](dy[i:i + size])[0].astype(total)
           for i in range(0, n, size))
  return dx, dw.astype(rhs.dtype)


_conv_sliced_kernel_grad.defvjp(_conv_sliced_kernel_grad_fwd, _conv_sliced_kernel_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_kernel_grad_by_tap(lhs, rhs, strides, padding, precision, preferred_element_type):
  return _conv(lhs, rhs, strides, padding, precision, preferred_element_type)


def _conv_kernel_grad_by_tap_bwd(strides, padding, precision, preferred_element_type, residuals, dy):
  """The input gradient as `lax` computes it; the kernel gradient as one matrix product of the cotangent
  with the input cells each tap sees (stacked, a copy of the input per tap), accumulated in float32 at
  least. (One product per tap is as fast but compiles into more kernels.)"""
  lhs, rhs = residuals
  total = jnp.promote_types(rhs.dtype, jnp.float32)
  dx = jax.vjp(lambda x: _conv(x, rhs, strides, padding, precision, preferred_element_type), lhs)[1](dy)[0]
  x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  kh, kw = rhs.shape[:2]
  taps = jnp.stack([_window_slice(x, i, j, dy.shape[1:3], strides) for i in range(kh) for j in range(kw)])
  dw = lax.dot_general(taps, dy, (((1, 2, 3), (0, 1, 2)), ((), ())), precision=precision,
                       preferred_element_type=total)
  return dx, dw.reshape(rhs.shape).astype(rhs.dtype)


# The forward pass and its residuals are those of the sliced variant.
_conv_kernel_grad_by_tap.defvjp(_conv_sliced_kernel_grad_fwd, _conv_kernel_grad_by_tap_bwd)


def reduce_window_max(x, window, strides, padding):
  """Plain `lax.reduce_window` max pooling of NHWC `x` with explicit padding (the `lax` setting's pool)."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """Max pooling of NHWC `x` with explicit padding (padded cells never win); its gradient is taken as
  one masked, strided scatter per window tap."""
  return _max_pool_cpu(x, window, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, strides, padding):
  return reduce_window_max(x, window, strides, padding)


def _max_pool_cpu_fwd(x, window, strides, padding):
  y = reduce_window_max(x, window, strides, padding)
  return y, (x, y)


def _max_pool_cpu_bwd(window, strides, padding, residuals, dy):
  """Each output's gradient goes to the first cell of its window (row-major) holding the maximum, as with
  `lax`'s own gradient; computed as one masked, strided scatter per tap instead of an argmax reduction."""
  x, y = residuals
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
  hp, wp = xp.shape[1:3]
  (oh, ow), (sh, sw) = y.shape[1:3], strides
  zero = jnp.zeros((), dy.dtype)
  # The first tap starts `claimed` and `dx` rather than arrays of zeros: XLA would constant-fold
  # `~zeros` into a literal as large as the output, which takes minutes to compile at 299 pixels.
  claimed = dx = None
  for i in range(window[0]):
    for j in range(window[1]):
      hit = _window_slice(xp, i, j, (oh, ow), strides) == y
      hit = hit if claimed is None else hit & ~claimed
      claimed = hit if claimed is None else claimed | hit
      placed = lax.pad(jnp.where(hit, dy, zero), zero,
                       ((0, 0, 0), (i, hp - i - (oh - 1) * sh - 1, sh - 1),
                        (j, wp - j - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
      dx = placed if dx is None else dx + placed
  return (dx[:, pt:pt + x.shape[1], pl:pl + x.shape[2]],)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)


# --- BatchNorm ---------------------------------------------------------------------------------------------


class BatchNorm(batch_norm.BatchNormVariables):
  """`flax.linen.BatchNorm` over the last axis (same variables, defaults and results) whose training-mode
  gradient is written out rather than traced.

  Traced through, flax's BatchNorm differentiates each of its dozen operations, which XLA:CPU compiles
  into ~15 kernels per layer, 1,400 of Inception-v3's train step; the closed form needs two reductions
  and one elementwise pass. Statistics are computed as flax computes them (float32, Var = E[x²] − E[x]²,
  clipped at zero) and the running averages move by `momentum` (the old value's weight).
  """

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average, ra_mean, ra_var, scale, bias, dtype = self.variables_for(x, use_running_average)
    compute = jnp.promote_types(x.dtype, jnp.float32)
    features = (x.shape[-1],)
    scale = jnp.ones(features, compute) if scale is None else scale.astype(compute)
    bias = jnp.zeros(features, compute) if bias is None else bias.astype(compute)
    if use_running_average:
      y = (x.astype(compute) - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return y.astype(dtype)
    y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon)
    self.update_averages(ra_mean, ra_var, mean, var)
    return y.astype(dtype)


def _moments(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(x in `dtype`, per-channel mean, per-channel variance) over all axes but the last."""
  x = x.astype(dtype)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))
  return x, mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
  """(normalised x · scale + bias, batch mean, batch variance), in scale's dtype."""
  x, mean, var = _moments(x, scale.dtype)
  return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  xc, mean, var = _moments(x, scale.dtype)
  inv = lax.rsqrt(var + epsilon)
  return ((xc - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  centred = x.astype(scale.dtype) - mean
  x_hat = centred * inv
  dy = dy.astype(scale.dtype)
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * x_hat, axes)
  # y depends on x directly and through the batch mean and variance; the two sums carry the latter.
  # The mean and variance are outputs too (for the running averages): their cotangents add 1/n and
  # 2(x − mean)/n per element.
  dx = (scale * inv) * (dy - dbias / n - x_hat * (dscale / n)) + dmean / n + centred * (2 * dvar / n)
  return dx.astype(x.dtype), dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


# --- the train step's norms -------------------------------------------------------------------------------

# Leaves up to this many values are summed together (see `squared_norms`).
SMALL_LEAF_SIZE = 1 << 14


def squared_norms(tree: Any) -> jax.Array:
  """Each leaf's sum of squares (in float32 at least), stacked in `jax.tree.leaves` order.

  XLA:CPU reduces a small vector with three kernels (square, a tree of partial sums, the final sum),
  and a network has hundreds of them (biases, BatchNorm offsets and scales): one norm of every leaf would
  add ~600 kernels to the train step's compilation. So the small leaves are laid end to end and summed
  per leaf with one segment sum; each large leaf is one reduction.
  """
  leaves = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.zeros((0,), jnp.float32)
  small = [i for i, x in enumerate(leaves) if x.size <= SMALL_LEAF_SIZE]
  large = [i for i, x in enumerate(leaves) if x.size > SMALL_LEAF_SIZE]
  parts = [jnp.stack([jnp.sum(jnp.square(leaves[i])) for i in large])] if large else []
  if small:
    segments = np.repeat(np.arange(len(small)), [leaves[i].size for i in small])
    values = jnp.concatenate([leaves[i].ravel() for i in small])
    parts.append(jax.ops.segment_sum(jnp.square(values), segments, num_segments=len(small),
                                     indices_are_sorted=True))
  order = np.argsort(np.array(large + small))   # back to leaf order
  return jnp.concatenate(parts)[order]


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm's rule (updates scaled by max_norm / norm when the global norm exceeds
  max_norm), with the norm summed as `squared_norms` sums it. The train step sums the same squares for
  its gradient norm, so XLA computes them once for both."""

  def update_fn(updates, state, params=None):
    del params
    norm = jnp.sqrt(jnp.sum(squared_norms(updates)))
    scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    updates = jax.tree.map(lambda t: t * scale.astype(t.dtype), updates)
    return updates, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
