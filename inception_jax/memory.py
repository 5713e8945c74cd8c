"""How much device memory training's step needs, from XLA's buffer assignment and JAX's abstract
evaluation (nothing is allocated): per step, per image kept for the backward pass, and the largest batch
that fits."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np

from inception_jax import train
from inception_jax import step as step_lib
from inception_jax.step_timing import abstract_step_args, training_steps


def step_memory_bytes(c, num_classes: int = 1000) -> int:
  """Bytes one device needs for config `c`'s train step, from XLA's buffer assignment: the state and the
  batch (the state is donated, so its outputs reuse its buffers) plus the step's temporaries. Compiles
  for abstract inputs; nothing is allocated."""
  _, steps_ = training_steps(c, num_classes)
  m = steps_.train_step.lower(*abstract_step_args(c, steps_)).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def saved_bytes_per_image(c, num_classes: int = 1000) -> float:
  """Bytes per image that training's backward pass keeps from the forward pass (the residuals of
  `jax.vjp` of training's loss), as JAX hands the program to any compiler: what `config.remat` reduces,
  whether or not a backend's scheduler keeps to it. Abstract: nothing is computed."""
  model = train.build_model(c, num_classes)
  loss_fn = step_lib.make_loss_fn(model, c)
  rng = jax.random.key(0)

  def saved(batch_size: int) -> int:
    image = jax.ShapeDtypeStruct((batch_size, c.image_size, c.image_size, 3), np.float32)
    batch = {'image': image, 'label': jax.ShapeDtypeStruct((batch_size,), np.int32)}
    variables = jax.eval_shape(lambda x: model.init({'params': rng, 'dropout': rng}, x, train=False), image)

    def residuals(variables, batch):
      _, backward, _ = jax.vjp(lambda p: loss_fn(p, variables.get('batch_stats', {}), batch, rng),
                               variables['params'], has_aux=True)
      return backward

    leaves = jax.tree.leaves(jax.eval_shape(residuals, variables, batch))
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in leaves
               if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key))

  return float(saved(2) - saved(1))  # the parameters, saved once whatever the batch, cancel


def device_memory_bytes() -> tuple[int, str]:
  """(usable bytes of one device, where the figure comes from): the allocator's limit on GPUs and TPUs,
  the machine's RAM shared by its CPU devices."""
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit')
  if limit:
    return int(limit), f'{device.device_kind} allocator limit'
  ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return ram // jax.local_device_count(), 'RAM / CPU devices'


class BatchSearch(NamedTuple):
  """What `largest_batch` found: the batch, the resolution it was searched to (a multiple of the device
  count), and the (batch, bytes per device) of each compilation made."""
  batch: int
  resolution: int
  tried: list[tuple[int, int]]


def largest_batch(c, limit_bytes: int, num_classes: int = 1000, step: int | None = None) -> BatchSearch:
  """The largest global batch, to within `step` images, whose train step fits in `limit_bytes` per
  device: a multiple of `step` (rounded up to a multiple of the device count; default, the device count
  itself) that fits while one `step` more does not. Memory grows linearly with the batch, so two compilations predict it and a few more confirm it;
  a coarser `step` saves compilations where the answer is in the thousands (a large accelerator)."""
  devices = jax.device_count()
  unit = -(-(step or devices) // devices) * devices
  tried: dict[int, int] = {}

  def need(batch: int) -> int:
    if batch not in tried:
      c.batch_size = batch
      tried[batch] = step_memory_bytes(c, num_classes)
    return tried[batch]

  low, high = 8 * unit, 16 * unit
  per_image = (need(high) - need(low)) / (high - low)
  fixed = need(low) - per_image * low
  if fixed + per_image * unit > limit_bytes:
    raise ValueError(f'even batch {unit} needs {fixed + per_image * unit:,.0f} bytes per device, '
                     f'over the {limit_bytes:,} available')
  batch = max(unit, int((limit_bytes - fixed) / per_image) // unit * unit)
  # The prediction is seldom exact (XLA's buffer assignment is not quite linear): bracket the answer with
  # steps that double away from it, then bisect, so a prediction off by many units costs a few compilations
  # (each is tens of seconds for Inception-v3 on a GPU), not one per unit.
  if need(batch) <= limit_bytes:
    fits, stride = batch, unit
    while need(fits + stride) <= limit_bytes:
      fits, stride = fits + stride, 2 * stride
    too_big = fits + stride
  else:
    too_big, stride = batch, unit
    while too_big - stride > unit and need(too_big - stride) > limit_bytes:
      too_big, stride = too_big - stride, 2 * stride
    fits = max(unit, too_big - stride)
  while too_big - fits > unit:
    middle = (fits + too_big) // 2 // unit * unit
    fits, too_big = (middle, too_big) if need(middle) <= limit_bytes else (fits, middle)
  need(fits), need(fits + unit)   # both neighbours measured, as the record shows
  return BatchSearch(fits, unit, sorted(tried.items()))
