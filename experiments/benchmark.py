"""Speed of one model's train step and inference: images/s, compile time, MFU.

    python -m experiments.benchmark --model=v3 --batch=16 --size=299
    python -m experiments.benchmark --model=v3 --batch=256 --dtype=bfloat16 --json      # on a GPU
    python -m experiments.benchmark --model=v3 --batch=16 --peer=keras                  # Keras 3 (JAX)
    python -m experiments.benchmark --model=v3 --batch=16 --peer=torchvision            # PyTorch
    python -m experiments.benchmark --model=v3 --batch=16 --profile=/tmp/v3_profile     # time per op

The train step is the one training runs (the preset recipe of experiments/configs/base.py: RMSProp,
label smoothing, auxiliary heads where the input size allows them, weight decay), on one random batch
already on the devices and split over all of them. Inference is the eval-mode forward pass.
MFU is the model FLOPs XLA counts for the step over the step time and the devices' peak: the published
dense peak for GPUs and TPUs, a measured matrix product on the CPU. `--peer` times the same network in
another library in this process (the same batch, size and number of steps; MFU from our FLOP count).

Compiled programs go to a persistent cache (`$JAX_COMPILATION_CACHE_DIR`, else
`~/.cache/inception_jax/jax`): JAX's, plus the whole train step in `executables/` under it, found without
tracing (`inception_jax.compile_cache`), so a second run has its step in seconds. With `--json` the last
line printed is one JSON object.
"""

from __future__ import annotations

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import argparse
import gc
import json
import os
import statistics
import sys
import time

import numpy as np

from experiments import malloc

# The networks each peer library has of ours (our name -> theirs).
PEERS = {
    'keras': {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2', 'xception': 'Xception'},
    'torchvision': {'inception_v3': 'inception_v3', 'googlenet': 'googlenet'},
}


# Steps traced by `--profile` (after the timed ones).
PROFILED_STEPS = 3


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _time_calls(fn, steps: int, warmup: int) -> float:
  """Median seconds of one call of `fn` (which blocks until its result is ready)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class _CacheHits:
  """Counts persistent-cache hits reported by JAX while alive."""

  def __init__(self):
    import jax
    self.count = 0

    def listener(event, **kwargs):
      if event == '/jax/compilation_cache/cache_hits':
        self.count += 1

    jax.monitoring.register_event_listener(listener)


def config_for(model: str, batch: int, size: int | None, dtype: str, aux: bool | None):
  from experiments.configs import base
  from inception_jax import models
  info = models.model_info(model)
  c = base.get_config()
  c.model = info.name
  c.batch_size = batch
  c.image_size = size or info.input_size
  c.dtype = dtype
  c.aux_logits = (c.image_size >= info.min_aux_input_size and info.num_aux_heads > 0) if aux is None else aux
  return c


def _training_steps(c, num_classes: int, devices=None):
  """Training's own jitted steps (`train.Steps`) for config `c` on a mesh of `devices` (default: all)."""
  from inception_jax import train
  model = train.build_model(c, num_classes)
  tx, schedule = train.build_optimizer(c, total_steps=10_000, steps_per_epoch=1_000, global_batch=c.batch_size)
  return model, train.Steps(model, tx, schedule, c, mesh=train.data_mesh(devices))


def measure_train_step(c, steps: int, warmup: int, devices=None, num_classes: int = 1000,
                       trace_dir: str | None = None, executables: str | None = None) -> dict:
  """Compiles and times training's own step for config `c` on a 1-D mesh of `devices` (default: all), on
  one synthetic batch made on the devices. With `trace_dir`, `PROFILED_STEPS` more are profiled there; with
  `executables`, the compiled step is kept in (and taken from) that directory (`compile_cache`)."""
  import jax
  from inception_jax import compile_cache, data
  hits = _CacheHits()
  model, steps_ = _training_steps(c, num_classes, devices)
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

  step_s = _time_calls(one_step, steps, warmup)
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


def step_memory_bytes(c, num_classes: int = 1000) -> int:
  """Bytes one device needs for config `c`'s train step, from XLA's buffer assignment: the state and the
  batch (the state is donated, so its outputs reuse its buffers) plus the step's temporaries. Compiles
  for abstract inputs; nothing is allocated."""
  import jax
  _, steps_ = _training_steps(c, num_classes)
  rng = jax.random.key(0)
  state = jax.eval_shape(steps_.init, rng)
  image = (c.batch_size, c.image_size, c.image_size, 3)
  batch = {'image': jax.ShapeDtypeStruct(image, np.float32, sharding=steps_.sharded),
           'label': jax.ShapeDtypeStruct(image[:1], np.int32, sharding=steps_.sharded)}
  m = steps_.train_step.lower(state, batch, rng).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def saved_bytes_per_image(c, num_classes: int = 1000) -> float:
  """Bytes per image that training's backward pass keeps from the forward pass (the residuals of
  `jax.vjp` of training's loss), as JAX hands the program to any compiler: what `config.remat` reduces,
  whether or not a backend's scheduler keeps to it. Abstract: nothing is computed."""
  import jax
  from inception_jax import train
  model = train.build_model(c, num_classes)
  loss_fn = train.make_loss_fn(model, c)
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
  import jax
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit')
  if limit:
    return int(limit), f'{device.device_kind} allocator limit'
  ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return ram // jax.local_device_count(), 'RAM / CPU devices'


def largest_batch(c, limit_bytes: int, num_classes: int = 1000) -> tuple[int, list[tuple[int, int]]]:
  """The largest global batch (a multiple of the device count) whose train step fits in `limit_bytes`
  per device, and the (batch, bytes) compilations that found it. Memory grows linearly with the batch,
  so two compilations predict it and a few more confirm it."""
  import jax
  unit = jax.device_count()
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
    fits, step = batch, unit
    while need(fits + step) <= limit_bytes:
      fits, step = fits + step, 2 * step
    too_big = fits + step
  else:
    too_big, step = batch, unit
    while too_big - step > unit and need(too_big - step) > limit_bytes:
      too_big, step = too_big - step, 2 * step
    fits = max(unit, too_big - step)
  while too_big - fits > unit:
    middle = (fits + too_big) // 2 // unit * unit
    fits, too_big = (middle, too_big) if need(middle) <= limit_bytes else (fits, middle)
  need(fits), need(fits + unit)   # both neighbours measured, as the record shows
  return fits, sorted(tried.items())


def benchmark_ours(c, steps: int, warmup: int, num_classes: int = 1000,
                   executables: str | None = None, trace_dir: str | None = None) -> dict:
  import jax
  out = measure_train_step(c, steps, warmup, num_classes=num_classes, executables=executables,
                           trace_dir=trace_dir)
  model, steps_, state, batch = out['model'], out['steps'], out['state'], out['batch']
  forward = jax.jit(lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=False).logits,
                    in_shardings=(steps_.replicated, steps_.replicated, steps_.sharded))
  infer = forward.lower(state.params, state.batch_stats, batch['image']).compile()
  out['infer_s'] = _time_calls(lambda: infer(state.params, state.batch_stats, batch['image']).block_until_ready(),
                               steps, warmup)
  return out


def benchmark_keras(c, steps: int, warmup: int, num_classes: int = 1000) -> dict:
  """keras.applications' network of the same name, trained with `train_on_batch` (JAX backend). Keras'
  networks have no auxiliary heads, so `--peer=keras` compares without them (`--aux=off` implied)."""
  import keras
  if keras.backend.backend() != 'jax':
    _fail(f'--peer=keras needs KERAS_BACKEND=jax (it is {keras.backend.backend()!r})')
  net = getattr(keras.applications, PEERS['keras'][c.model])(
      weights=None, input_shape=(c.image_size, c.image_size, 3), classes=num_classes)
  net.compile(optimizer=keras.optimizers.RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0),
              loss=keras.losses.SparseCategoricalCrossentropy())
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (c.batch_size, c.image_size, c.image_size, 3)).astype(np.float32)
  y = rng.integers(0, num_classes, (c.batch_size,))
  start = time.perf_counter()
  net.train_on_batch(x, y)
  compile_s = time.perf_counter() - start
  step_s = _time_calls(lambda: net.train_on_batch(x, y), steps, warmup)
  net.predict_on_batch(x)
  infer_s = _time_calls(lambda: net.predict_on_batch(x), steps, warmup)
  return {'compile_s': compile_s, 'step_s': step_s, 'infer_s': infer_s}


def benchmark_torchvision(c, steps: int, warmup: int, num_classes: int = 1000) -> dict:
  """torchvision's network of the same name in eager PyTorch, SGD with momentum, aux loss when aux is on."""
  # torch imports triton (GPU kernels) when installed; its compiled module crashes the process when
  # TensorFlow (our input pipeline) was loaded first. Eager CPU PyTorch does not need it.
  sys.modules.setdefault('triton', None)
  import torch
  import torchvision
  torch.set_num_threads(os.cpu_count())
  net = getattr(torchvision.models, PEERS['torchvision'][c.model])(
      weights=None, aux_logits=c.aux_logits, init_weights=False, num_classes=num_classes)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  x = torch.rand(c.batch_size, 3, c.image_size, c.image_size) * 2 - 1
  y = torch.randint(0, num_classes, (c.batch_size,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_step():
    net.train()
    out = net(x)
    if isinstance(out, tuple):   # (logits, aux logits...) with aux heads on
      loss = loss_fn(out[0], y) + sum(c.aux_weight * loss_fn(a, y) for a in out[1:] if a is not None)
    else:
      loss = loss_fn(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()

  def infer():
    net.eval()
    with torch.no_grad():
      net(x)

  start = time.perf_counter()
  train_step()
  compile_s = time.perf_counter() - start   # eager: the first step, not a compilation
  step_s = _time_calls(train_step, steps, warmup)
  infer_s = _time_calls(infer, steps, warmup)
  return {'compile_s': compile_s, 'step_s': step_s, 'infer_s': infer_s}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.benchmark', description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='v3', help='a model name or alias (see README)')
  parser.add_argument('--batch', type=int, default=16, help='global batch, split over all devices')
  parser.add_argument('--size', type=int, default=None, help="input size (default: the model's)")
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--aux', choices=('auto', 'on', 'off'), default='auto',
                      help='auxiliary heads (auto: on when the size allows them)')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (the median is reported)')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--peer', choices=sorted(PEERS), default=None, help='time this library instead of ours')
  parser.add_argument('--remat', choices=('blocks', 'dots'), default='',
                      help='activation checkpointing (config key remat): blocks keeps only each module\'s '
                           'input, dots the convolution and dense outputs')
  parser.add_argument('--max_batch', action='store_true',
                      help="instead of timing: the largest batch whose train step fits in a device's "
                           'memory, from XLA\'s buffer assignment (no arrays are allocated)')
  parser.add_argument('--memory_gb', type=float, default=None,
                      help="with --max_batch: a device's memory (default: the allocator's limit; on the "
                           'CPU the RAM divided among the CPU devices)')
  parser.add_argument('--profile', metavar='DIR', default=None,
                      help='also trace a few train steps into DIR and break the step down op by op '
                           '(DIR/ops.md, DIR/ops.json; experiments/op_profile.py)')
  parser.add_argument('--kernels', choices=('auto', 'lax', 'cpu'), default='auto',
                      help='how convolutions, pools and BN are computed (config key kernels): lax is stock '
                           'flax/optax/lax, cpu the XLA:CPU formulations, auto cpu on the CPU only')
  parser.add_argument('--no_cache', action='store_true', help='no persistent compilation cache')
  parser.add_argument('--json', action='store_true', help='end with one JSON line')
  args = parser.parse_args(argv)
  if args.peer == 'keras' and not os.environ.get('KERAS_BACKEND'):
    os.environ['KERAS_BACKEND'] = 'jax'  # before anything imports Keras (TensorFlow can)
  import jax
  from inception_jax import hardware, kernels, models
  if args.batch < 1 or (args.peer is None and args.batch % jax.device_count()):
    _fail(f'--batch must be a positive multiple of the {jax.device_count()} devices, got {args.batch}')
  if args.steps < 1 or args.warmup < 0:
    _fail('--steps must be at least 1 and --warmup at least 0')
  try:
    info = models.model_info(args.model)
    c = config_for(args.model, args.batch, args.size, args.dtype,
                   {'auto': None, 'on': True, 'off': False}[args.aux])
    if c.image_size < info.min_input_size or (c.aux_logits and c.image_size < info.min_aux_input_size):
      minimum = info.min_aux_input_size if c.aux_logits else info.min_input_size
      raise ValueError(f'--size {c.image_size} is below {c.model}\'s minimum of {minimum} pixels'
                       + (' with auxiliary heads (--aux=off lowers it)' if c.aux_logits else ''))
    if args.peer == 'keras':
      c.aux_logits = False
    if args.peer and c.model not in PEERS[args.peer]:
      raise ValueError(f'{args.peer} has no {c.model}; with --peer={args.peer} use one of: '
                       f'{", ".join(PEERS[args.peer])}')
  except ValueError as e:
    _fail(str(e))
  if args.profile and (args.peer or args.max_batch):
    _fail('--profile traces our train step; it takes no --peer or --max_batch')
  if args.profile and os.path.exists(args.profile) and not os.path.isdir(args.profile):
    _fail(f'--profile={args.profile} is a file; give a directory (made if missing) for the trace and tables')
  c.remat = args.remat
  c.kernels = args.kernels
  from inception_jax import compile_cache
  cache = None if args.no_cache else compile_cache.enable_persistent_cache()
  if args.max_batch:
    return report_largest_batch(c, args)

  # The CPU's matrix-product peak is measured first, while nothing else of ours has run in this process.
  peak, peak_source = hardware.peak_flops(args.dtype)
  executables = os.path.join(cache, 'executables') if cache else None
  ours = (benchmark_ours(c, args.steps, args.warmup, executables=executables, trace_dir=args.profile)
          if args.peer is None else None)
  if args.peer is not None:
    # FLOPs are the network's, whoever runs it: count them with our (identical) network on one device.
    flops = measure_train_step(c, 1, 0, devices=jax.devices()[:1])['flops_per_step']
    result = {'keras': benchmark_keras, 'torchvision': benchmark_torchvision}[args.peer](c, args.steps,
                                                                                           args.warmup)
    result.update(flops_per_step=flops, peak_memory_bytes=None, cache_hits=None, executable_loaded=None)
  else:
    result = ours
  record = {
      'model': c.model, 'peer': args.peer, 'batch': c.batch_size, 'size': c.image_size, 'dtype': c.dtype,
      'aux': bool(c.aux_logits), 'remat': c.remat, 'kernels': kernels.resolve(c.kernels),
      'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
      'device_kind': jax.devices()[0].device_kind,
      'train_images_per_sec': c.batch_size / result['step_s'],
      'infer_images_per_sec': c.batch_size / result['infer_s'],
      'step_ms': 1e3 * result['step_s'], 'compile_s': result['compile_s'],
      'flops_per_step': result['flops_per_step'],
      'mfu': result['flops_per_step'] / result['step_s'] / peak,
      'peak_flops': peak, 'peak_source': peak_source,
      'peak_memory_bytes': result['peak_memory_bytes'], 'cache_hits': result['cache_hits'],
      'executable_loaded': result['executable_loaded'], 'train_loss': result.get('loss'),
      'cache_dir': cache, 'allocator': malloc.in_use(),
  }
  if args.profile:
    from experiments import op_profile
    rows = op_profile.profile_table(result['compiled'].as_text(), args.profile, PROFILED_STEPS)
    op_profile.write(rows, args.profile)
    record['ms_per_step_by_kind'] = {k: v['total'] for k, v in op_profile.by_category(rows).items()}
    print(op_profile.markdown(rows, top=10), flush=True)
    print(f'profile: {args.profile} (ops.md, ops.json, and the trace for TensorBoard or Perfetto)', flush=True)
  who = f'{args.peer} ' if args.peer else ''
  print(f'{who}{c.model} batch {c.batch_size} at {c.image_size}px {c.dtype} on {record["devices"]} × '
        f'{record["device_kind"]}: train {record["train_images_per_sec"]:.1f} img/s '
        f'({record["step_ms"]:.0f} ms/step), inference {record["infer_images_per_sec"]:.1f} img/s, '
        f'compile {record["compile_s"]:.1f} s, MFU {100 * record["mfu"]:.1f}% '
        f'(of {peak / 1e12:.2f} TFLOP/s, {peak_source})', flush=True)
  if args.json:
    print(json.dumps(record), flush=True)
  return 0


def report_largest_batch(c, args) -> int:
  import jax
  from inception_jax import kernels
  if args.peer:
    _fail('--max_batch measures our train step; it takes no --peer')
  limit, source = ((int(args.memory_gb * 2**30), '--memory_gb') if args.memory_gb else device_memory_bytes())
  try:
    batch, tried = largest_batch(c, limit)
  except ValueError as e:
    _fail(str(e))
  per_image = (tried[-1][1] - tried[0][1]) / max(1, tried[-1][0] - tried[0][0])
  saved = saved_bytes_per_image(c)
  record = {'model': c.model, 'size': c.image_size, 'dtype': c.dtype, 'aux': bool(c.aux_logits),
            'remat': c.remat, 'kernels': kernels.resolve(c.kernels), 'devices': jax.device_count(),
            'device_kind': jax.devices()[0].device_kind,
            'memory_limit_bytes': limit, 'memory_limit_source': source, 'max_batch': batch,
            'bytes_per_image': per_image, 'saved_bytes_per_image': saved, 'tried': [{'batch': b, 'bytes': n} for b, n in tried]}
  remat = f' with remat={c.remat}' if c.remat else ''
  print(f'{c.model} at {c.image_size}px {c.dtype}{remat}: largest global batch {batch}'
        f' on {record["devices"]} × {record["device_kind"]} with {limit / 2**30:.2f} GiB each '
        f'({source}); {per_image / 2**20:.1f} MiB per image; the backward pass keeps '
        f'{saved / 2**20:.2f} MiB per image', flush=True)
  if args.json:
    print(json.dumps(record), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
