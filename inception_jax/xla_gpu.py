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

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis (same variables, defaults and results in float32) whose
  normalisation is one multiply-add in the compute dtype."""
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable = nn.initializers.zeros
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = self.param('scale', self.scale_init, features, self.param_dtype) if self.use_scale else None
    bias = self.param('bias', self.bias_init, features, self.param_dtype) if self.use_bias else None
    dtype = self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None))
    statistics = jnp.promote_types(x.dtype, jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      wide = x.astype(statistics)
      mean = jnp.mean(wide, axes)
      var = jnp.maximum(0.0, jnp.mean(jnp.square(wide), axes) - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    multiplier = lax.rsqrt(var.astype(statistics) + self.epsilon)
    if scale is not None:
      multiplier = multiplier * scale.astype(statistics)
    offset = -mean.astype(statistics) * multiplier
    if bias is not None:
      offset = offset + bias.astype(statistics)
    return x.astype(dtype) * multiplier.astype(dtype) + offset.astype(dtype)
