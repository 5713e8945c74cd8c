"""The `gpu` side of the `kernels` switch (see `inception_jax.kernels`): BatchNorm that keeps a bfloat16
network's activations in bfloat16.

flax's BatchNorm subtracts the float32 mean from the activations, so under a bfloat16 compute dtype its
normalisation runs in float32 and the backward pass carries float32 activation gradients through it: a
float32 tensor of the activation's size wherever XLA does not fuse the round trip away. Here the
statistics are float32 (one pass, E[x] and E[x²], as flax's fast variance computes them), and they are
folded into one per-channel scale and offset, cast to the compute dtype; the activation itself sees only
x · a + b in that dtype. In float32 and float64 it is flax's BatchNorm to rounding (tested), with the same
variables. Convolutions, pooling and the step's norms are `lax`'s.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from inception_jax import batch_norm


class BatchNorm(batch_norm.BatchNormVariables):
  """`flax.linen.BatchNorm` over the last axis (same variables, defaults and results in float32) whose
  normalisation is one multiply-add in the compute dtype."""

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average, ra_mean, ra_var, scale, bias, dtype = self.variables_for(x, use_running_average)
    statistics = jnp.promote_types(x.dtype, jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      wide = x.astype(statistics)
      mean = jnp.mean(wide, axes)
      var = jnp.maximum(0.0, jnp.mean(jnp.square(wide), axes) - jnp.square(mean))
      self.update_averages(ra_mean, ra_var, mean, var)
    multiplier = lax.rsqrt(var.astype(statistics) + self.epsilon)
    if scale is not None:
      multiplier = multiplier * scale.astype(statistics)
    offset = -mean.astype(statistics) * multiplier
    if bias is not None:
      offset = offset + bias.astype(statistics)
    return x.astype(dtype) * multiplier.astype(dtype) + offset.astype(dtype)
