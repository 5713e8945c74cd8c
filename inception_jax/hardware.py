"""What the devices can compute: accelerators' peak FLOP/s from their data sheets, and on the CPU a
measured matrix product (a CPU's peak depends on its cores, clock and vector units, and on the day's load
of a shared machine)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per device from the vendors' data sheets, by a substring of `device_kind`, for
# (bfloat16, float32). float32 matrix products on NVIDIA GPUs run as TF32 under XLA's default precision, so
# the float32 figure is the TF32 one; TPUs multiply float32 in bfloat16 passes, so both are the bf16 peak.
PEAK_FLOPS = {
    'H200': (989e12, 495e12),
    'H100': (989e12, 495e12),
    'A100': (312e12, 156e12),
    'L4': (121e12, 60e12),
    'V100': (125e12, 15.7e12),
    'TPU v6': (918e12, 918e12),
    'TPU v5p': (459e12, 459e12),
    'TPU v5': (197e12, 197e12),   # v5e ("TPU v5 lite")
    'TPU v4': (275e12, 275e12),
}


def peak_flops(dtype: str) -> tuple[float, str]:
  """(FLOP/s of all devices together, where the figure comes from); on the CPU, a measured product."""
  devices = jax.devices()
  kind = devices[0].device_kind
  if devices[0].platform == 'cpu':
    return measured_matmul_flops(dtype), 'measured matrix product'
  for name, (bf16, fp32) in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return len(devices) * (bf16 if dtype == 'bfloat16' else fp32), f'data sheet ({kind})'
  return float('nan'), f'unknown device {kind!r}'


def measured_matmul_flops(dtype: str = 'float32', n: int = 2048, repeats: int = 5) -> float:
  """The best FLOP/s of an n×n matrix product on the default device (all its cores)."""
  a = jnp.ones((n, n), jnp.dtype(dtype))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best
