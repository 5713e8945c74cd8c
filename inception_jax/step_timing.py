"""Compiles and times training's own train step on a synthetic batch: what the benchmark and scaling
tools measure (compile time, median step time with steps dispatched back to back, XLA's FLOP count, peak
device memory)."""

from __future__ import annotations

import gc
import statistics
import time

import jax

from inception_jax import compile_cache, data, train
from inception_jax import step as step_lib

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


def time_steps(step, wait, steps: int, warmup: int) -> float:
  """Seconds per call of `step()` called back to back, as the training loop calls it: the host dispatches
  the next step while the device still runs the one before, and `wait()` blocks on the last. The median
  over up to three rounds that share the `steps`, after `warmup` calls. (Timing each call to its end, as
  `time_calls` does, adds the host's dispatch to every step: Inception-v3 at batch 128 on an H200 took
  44.5 ms per step so, against 35.4 ms in the training loop.)"""
  if warmup:
    for _ in range(warmup):
      step()
    wait()
  size = max(1, steps // 3)
  times = []
  for _ in range(max(1, steps // size)):
    start = time.perf_counter()
    for _ in range(size):
      step()
    wait()
    times.append((time.perf_counter() - start) / size)
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
  """Training's own jitted steps (`step.JittedSteps`) for config `c` on a mesh of `devices` (default: all)."""
  model = train.build_model(c, num_classes)
  tx, schedule = train.build_optimizer(c, total_steps=10_000, steps_per_epoch=1_000, global_batch=c.batch_size)
  return model, step_lib.JittedSteps(model, tx, schedule, c, mesh=step_lib.data_mesh(devices))


def abstract_step_args(c, steps_) -> tuple:
  """(state, batch, rng) of `steps_.train_step` for config `c` as shapes and shardings: enough to lower or
  compile the step; nothing is allocated."""
  rng = jax.eval_shape(jax.random.key, 0)
  image = (c.batch_size, c.image_size, c.image_size, 3)
  batch = {'image': jax.ShapeDtypeStruct(image, jax.numpy.float32, sharding=steps_.sharded),
           'label': jax.ShapeDtypeStruct(image[:1], jax.numpy.int32, sharding=steps_.sharded)}
  return jax.eval_shape(steps_.init, rng), batch, rng


def step_flops(c, num_classes: int = 1000) -> float:
  """FLOPs of one training step of config `c` over its global batch, as XLA counts the program JAX hands
  it, before any backend rewrites it; counted by the CPU backend for the same program on one device.

  Why not the compiled program's count: it depends on the backend. On GPUs the convolutions become cuDNN
  calls it does not count (Inception-v3's step at batch 128 read 0.6 GFLOP per image on an H200 instead of
  33), and a program partitioned over devices counts one device's share plus the partitioning's own work.
  Backends behind a PJRT plugin (GPUs, TPUs) count nothing before compiling, hence the CPU. `kernels` is
  resolved for the default backend, so the program counted is the one that runs. NaN where JAX has no
  CPU backend (JAX_PLATFORMS names none)."""
  try:
    cpu = jax.devices('cpu')[:1]
  except RuntimeError:
    return float('nan')
  _, steps_ = training_steps(c, num_classes, devices=cpu)
  cost = steps_.train_step.lower(*abstract_step_args(c, steps_)).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get('flops', float('nan')))


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
  flops = step_flops(c, num_classes)

  holder = {'state': state}

  def one_step():
    holder['state'], holder['metrics'] = train_step(holder['state'], batch, rng)

  def wait():
    holder['loss'] = float(holder['metrics']['loss'])

  step_s = time_steps(one_step, wait, steps, warmup)
  if trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(PROFILED_STEPS):
      one_step()
    wait()
    jax.profiler.stop_trace()
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in mesh.devices.flat
           if d.process_index == jax.process_index()]
  return {'compile_s': compile_s, 'executable_loaded': loaded, 'step_s': step_s, 'flops_per_step': flops,
          'loss': holder['loss'],
          'peak_memory_bytes': max(peaks) if all(p is not None for p in peaks) else None,
          'cache_hits': hits.count, 'model': model, 'steps': steps_, 'state': holder['state'], 'batch': batch,
          'compiled': train_step}
