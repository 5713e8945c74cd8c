"""Compiles and times training's own train step on a synthetic batch: what the benchmark and scaling
tools measure (compile time, median step time, XLA's FLOP count, peak device memory)."""

from __future__ import annotations

import gc
import statistics
import time

import jax

from inception_jax import compile_cache, data, train

# Steps traced when a trace directory is given (after the timed ones).
PROFILED_STEPS = 3


def time_calls(fn, steps: int, warmup: int) -> float:
  """Median seconds of one call of `fn` (which blocks until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class CacheHits:
  """Counts persistent-cache hits reported by JAX while alive."""

  def __init__(self):
    self.count = 0

    def listener(event, **kwargs):
      if event == '/jax/compilation_cache/cache_hits':
        self.count += 1

    jax.monitoring.register_event_listener(listener)


def training_steps(c, num_classes: int, devices=None):
  """Training's own jitted steps (`train.Steps`) for config `c` on a mesh of `devices` (default: all)."""
  model = train.build_model(c, num_classes)
  tx, schedule = train.build_optimizer(c, total_steps=10_000, steps_per_epoch=1_000, global_batch=c.batch_size)
  return model, train.Steps(model, tx, schedule, c, mesh=train.data_mesh(devices))


def measure_train_step(c, steps: int, warmup: int, devices=None, num_classes: int = 1000,
                       trace_dir: str | None = None, executables: str | None = None) -> dict:
  """Compiles and times training's own step for config `c` on a 1-D mesh of `devices` (default: all), on
  one synthetic batch made on the devices. With `trace_dir`, `PROFILED_STEPS` more are profiled there; with
  `executables`, the compiled step is kept in (and taken from) that directory (`compile_cache`)."""
  hits = CacheHits()
  model, steps_ = training_steps(c, num_classes, devices)
  mesh = steps_.mesh
  rng = jax.random.key(0)
  state = steps_.init(rng)
  batch = next(data.synthetic_batches(data.ImageSpec(c.image_size), c.batch_size, num_classes,
                                      sharding=steps_.sharded))

  # Tracing makes Python's collector run many times over everything imported and built so far (JAX,
  # TensorFlow, the model); frozen meanwhile, that heap is skipped (Inception-v3's step at 299 px:
  # trace, lower and a load from JAX's cache took 4.1 s instead of 5.9, medians of four runs).
  gc.freeze()
  start = time.perf_counter()
  try:
    if executables:
      description = f'train_step num_classes={num_classes} config={c.to_json_best_effort(sort_keys=True)}'
      train_step, loaded = compile_cache.load_or_compile(
          steps_.train_step, (state, batch, rng), description=description, directory=executables,
          devices=mesh.devices.flat)
    else:
      train_step, loaded = steps_.train_step.lower(state, batch, rng).compile(), False
  finally:
    compile_s = time.perf_counter() - start
    gc.unfreeze()
  cost = train_step.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get('flops', float('nan'))) * mesh.size  # SPMD: the count is per device

  holder = {'state': state}

  def one_step():
    holder['state'], metrics = train_step(holder['state'], batch, rng)
    holder['loss'] = float(metrics['loss'])   # waits for the step

  step_s = time_calls(one_step, steps, warmup)
  if trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(PROFILED_STEPS):
      one_step()
    jax.profiler.stop_trace()
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in mesh.devices.flat
           if d.process_index == jax.process_index()]
  return {'compile_s': compile_s, 'executable_loaded': loaded, 'step_s': step_s, 'flops_per_step': flops,
          'loss': holder['loss'],
          'peak_memory_bytes': max(peaks) if all(p is not None for p in peaks) else None,
          'cache_hits': hits.count, 'model': model, 'steps': steps_, 'state': holder['state'], 'batch': batch,
          'compiled': train_step}
