"""What the `kernels` switch's own BatchNorm formulations (`xla_cpu`, `xla_gpu`) share with
`flax.linen.BatchNorm`: its fields, defaults and variables (names, shapes, initialisers), and how the
running averages move. Checkpoints and converted weights therefore load into any formulation."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class BatchNormVariables(nn.Module):
  """flax's BatchNorm over the last axis, less its computation: a subclass writes `__call__` (compact) and
  calls `variables_for` there, then `update_averages` with the batch's statistics."""
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable = nn.initializers.zeros
  scale_init: Callable = nn.initializers.ones

  def variables_for(self, x: jax.Array, use_running_average: bool | None):
    """(use_running_average resolved, running mean, running variance, scale or None, bias or None, the
    output dtype) for input `x`, created where missing."""
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    scale = self.param('scale', self.scale_init, features, self.param_dtype) if self.use_scale else None
    bias = self.param('bias', self.bias_init, features, self.param_dtype) if self.use_bias else None
    dtype = self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None))
    return use_running_average, ra_mean, ra_var, scale, bias, dtype

  def update_averages(self, ra_mean, ra_var, mean: jax.Array, var: jax.Array) -> None:
    """Moves the running averages towards the batch's statistics by `momentum` (the old value's weight);
    not while the variables are being created, as flax does."""
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
