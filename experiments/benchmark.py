"""Speed of one model's train step and inference: images/s, compile time, MFU.

    python -m experiments.benchmark --model=v3 --batch=16 --size=299
    python -m experiments.benchmark --model=v3 --batch=256 --dtype=bfloat16 --json      # on a GPU
    python -m experiments.benchmark --model=v3 --batch=16 --peer=keras                  # Keras 3 (JAX)
    python -m experiments.benchmark --model=v3 --batch=16 --peer=torchvision            # PyTorch
    python -m experiments.benchmark --model=v3 --batch=16 --profile=/tmp/v3_profile     # time per op

The train step is the one training runs (the preset recipe of experiments/configs/base.py: RMSProp,
label smoothing, auxiliary heads where the input size allows them, weight decay), on one random batch
already on the devices and split over all of them, timed with steps dispatched back to back as the
training loop runs them. Inference is the eval-mode forward pass.
MFU is the FLOPs XLA counts for the step (`step_timing.step_flops`: the program before any backend
rewrites it) over the step time and the devices' peak: the published
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

import json
import os

from absl import flags

from experiments import cli, malloc, peers

_MODEL = flags.DEFINE_string('model', 'v3', 'a model name or alias (see README)')
_BATCH = flags.DEFINE_integer('batch', 16, 'global batch, split over all devices')
_SIZE = flags.DEFINE_integer('size', None, "input size (default: the model's)")
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
_AUX = flags.DEFINE_enum('aux', 'auto', ['auto', 'on', 'off'], 'auxiliary heads (auto: on when the size allows them)')
_STEPS = flags.DEFINE_integer('steps', 10, 'timed steps (the median is reported)')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'untimed steps first')
_PEER = flags.DEFINE_enum('peer', None, sorted(peers.PEERS), 'time this library instead of ours')
_REMAT = flags.DEFINE_enum('remat', '', ['', 'blocks', 'dots'],
                           "activation checkpointing (config key remat): blocks keeps only each module's "
                           'input, dots the convolution and dense outputs')
_MAX_BATCH = flags.DEFINE_bool('max_batch', False,
                               "instead of timing: the largest batch whose train step fits in a device's "
                               "memory, from XLA's buffer assignment (no arrays are allocated)")
_MEMORY_GB = flags.DEFINE_float('memory_gb', None,
                                "with --max_batch: a device's memory (default: the allocator's limit; on the "
                                'CPU the RAM divided among the CPU devices)')
_MAX_BATCH_RESOLUTION = flags.DEFINE_integer(
    'max_batch_resolution', None, 'with --max_batch: find the answer to within this many images (fewer '
    'compilations; default: the device count, exact)', lower_bound=1)
_PROFILE = flags.DEFINE_string('profile', None,
                               'also trace a few train steps into this directory and break the step down op '
                               'by op (DIR/ops.md, DIR/ops.json; experiments/op_profile.py)')
_KERNELS = flags.DEFINE_enum('kernels', 'auto', ['auto', 'lax', 'cpu', 'gpu'],
                             'how convolutions, pools and BN are computed (config key kernels): lax is stock '
                             'flax/optax/lax, cpu the XLA:CPU formulations, gpu lax with BatchNorm in the compute '
                             'dtype, auto cpu on the CPU only')
_EXECUTABLE_CACHE = flags.DEFINE_bool(
    'executable_cache', True, "with the cache on, also keep the whole compiled train step in its executables/ "
    "(found without tracing); --noexecutable_cache leaves JAX's own cache alone")
_DONATE = flags.DEFINE_bool('donate', True, 'the train step writes the new state into the old one\'s buffers '
                            '(config key donate_state); --nodonate measures what that saves')
_WEIGHT_NORMS = flags.DEFINE_bool('weight_norms', True, "the step also logs the weights' and the update's norms "
                                  '(config key log_weight_norms); --noweight_norms measures what they cost')
_JSON = flags.DEFINE_bool('json', False, 'end with one JSON line')


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


def benchmark_ours(c, steps: int, warmup: int, num_classes: int = 1000,
                   executables: str | None = None, trace_dir: str | None = None) -> dict:
  from inception_jax import step_timing
  out = step_timing.measure_train_step(c, steps, warmup, num_classes=num_classes, executables=executables,
                                      trace_dir=trace_dir)
  model, steps_, state, batch = out['model'], out['steps'], out['state'], out['batch']
  forward = model.kernels.jit(
      lambda p, s, x: model.apply({'params': p, 'batch_stats': s}, x, train=False).logits,
      in_shardings=(steps_.replicated, steps_.replicated, steps_.sharded))
  infer = forward.lower(state.params, state.batch_stats, batch['image']).compile()
  out['infer_s'] = step_timing.time_calls(
      lambda: infer(state.params, state.batch_stats, batch['image']).block_until_ready(), steps, warmup)
  return out


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    cli.fail(f'unexpected argument {argv[1]!r}; the settings are flags (see --help)')
  peer, profile = _PEER.value, _PROFILE.value
  if peer == 'keras' and not os.environ.get('KERAS_BACKEND'):
    os.environ['KERAS_BACKEND'] = 'jax'  # before anything imports Keras (TensorFlow can)
  import jax
  from inception_jax import hardware, kernels, models
  if _BATCH.value < 1 or (peer is None and _BATCH.value % jax.device_count()):
    cli.fail(f'--batch must be a positive multiple of the {jax.device_count()} devices, got {_BATCH.value}')
  if _STEPS.value < 1 or _WARMUP.value < 0:
    cli.fail('--steps must be at least 1 and --warmup at least 0')
  try:
    info = models.model_info(_MODEL.value)
    c = config_for(_MODEL.value, _BATCH.value, _SIZE.value, _DTYPE.value,
                   {'auto': None, 'on': True, 'off': False}[_AUX.value])
    if c.image_size < info.min_input_size or (c.aux_logits and c.image_size < info.min_aux_input_size):
      minimum = info.min_aux_input_size if c.aux_logits else info.min_input_size
      raise ValueError(f'--size {c.image_size} is below {c.model}\'s minimum of {minimum} pixels'
                       + (' with auxiliary heads (--aux=off lowers it)' if c.aux_logits else ''))
    if peer == 'keras':
      c.aux_logits = False
    if peer and c.model not in peers.PEERS[peer]:
      raise ValueError(f'{peer} has no {c.model}; with --peer={peer} use one of: '
                       f'{", ".join(peers.PEERS[peer])}')
  except ValueError as e:
    cli.fail(e)
  if profile and (peer or _MAX_BATCH.value):
    cli.fail('--profile traces our train step; it takes no --peer or --max_batch')
  if profile and os.path.exists(profile) and not os.path.isdir(profile):
    cli.fail(f'--profile={profile} is a file; give a directory (made if missing) for the trace and tables')
  c.remat = _REMAT.value
  c.kernels = _KERNELS.value
  c.donate_state = _DONATE.value
  c.log_weight_norms = _WEIGHT_NORMS.value
  cache = cli.enable_compilation_cache()
  if _MAX_BATCH.value:
    return report_largest_batch(c)

  # The CPU's matrix-product peak is measured first, while nothing else of ours has run in this process.
  peak, peak_source = hardware.peak_flops(_DTYPE.value)
  from inception_jax import step_timing
  if peer is None:
    executables = os.path.join(cache, 'executables') if cache and _EXECUTABLE_CACHE.value else None
    result = benchmark_ours(c, _STEPS.value, _WARMUP.value, executables=executables, trace_dir=profile)
  else:
    # FLOPs are the network's, whoever runs it: counted for our (identical) network.
    flops = step_timing.step_flops(c)
    try:
      result = peers.BENCHMARKS[peer](c, _STEPS.value, _WARMUP.value)
    except ValueError as e:
      cli.fail(e)
    result.update(flops_per_step=flops, peak_memory_bytes=None, cache_hits=None, executable_loaded=None)
  record = {
      'model': c.model, 'peer': peer, 'batch': c.batch_size, 'size': c.image_size, 'dtype': c.dtype,
      'aux': bool(c.aux_logits), 'remat': c.remat, 'kernels': kernels.resolve(c.kernels), 'donate': c.donate_state,
      'weight_norms': c.log_weight_norms,
      'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
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
  if profile:
    from experiments import op_profile
    hlo = result['compiled'].as_text()
    rows = op_profile.profile_table(hlo, profile, step_timing.PROFILED_STEPS)
    breakdown = op_profile.step_breakdown(hlo, profile, step_timing.PROFILED_STEPS)
    op_profile.write(rows, profile, breakdown)
    record['ms_per_step_by_kind'] = {k: v['total'] for k, v in op_profile.by_category(rows).items()}
    record['breakdown'] = breakdown
    print(op_profile.breakdown_markdown(breakdown), flush=True)
    print(op_profile.markdown(rows, top=10), flush=True)
    print(f'profile: {profile} (ops.md, ops.json, and the trace for TensorBoard or Perfetto)', flush=True)
  who = f'{peer} ' if peer else ''
  print(f'{who}{c.model} batch {c.batch_size} at {c.image_size}px {c.dtype} on {record["devices"]} × '
        f'{record["device_kind"]}: train {record["train_images_per_sec"]:.1f} img/s '
        f'({record["step_ms"]:.0f} ms/step), inference {record["infer_images_per_sec"]:.1f} img/s, '
        f'compile {record["compile_s"]:.1f} s, MFU {100 * record["mfu"]:.1f}% '
        f'(of {peak / 1e12:.2f} TFLOP/s, {peak_source})', flush=True)
  if _JSON.value:
    print(json.dumps(record), flush=True)
  return 0


def report_largest_batch(c) -> int:
  if _PEER.value:
    cli.fail('--max_batch measures our train step; it takes no --peer')
  import jax
  from inception_jax import kernels, memory
  limit, source = ((int(_MEMORY_GB.value * 2**30), '--memory_gb') if _MEMORY_GB.value
                   else memory.device_memory_bytes())
  try:
    batch, resolution, tried = memory.largest_batch(c, limit, step=_MAX_BATCH_RESOLUTION.value)
  except ValueError as e:
    cli.fail(e)
  per_image = (tried[-1][1] - tried[0][1]) / max(1, tried[-1][0] - tried[0][0])
  saved = memory.saved_bytes_per_image(c)
  record = {'model': c.model, 'size': c.image_size, 'dtype': c.dtype, 'aux': bool(c.aux_logits),
            'remat': c.remat, 'kernels': kernels.resolve(c.kernels), 'devices': jax.device_count(),
            'device_kind': jax.devices()[0].device_kind,
            'memory_limit_bytes': limit, 'memory_limit_source': source, 'max_batch': batch,
            'max_batch_resolution': resolution,
            'bytes_per_image': per_image, 'saved_bytes_per_image': saved,
            'tried': [{'batch': b, 'bytes': n} for b, n in tried]}
  remat = f' with remat={c.remat}' if c.remat else ''
  print(f'{c.model} at {c.image_size}px {c.dtype}{remat}: largest global batch {batch}'
        f' on {record["devices"]} × {record["device_kind"]} with {limit / 2**30:.2f} GiB each '
        f'({source}); {per_image / 2**20:.1f} MiB per image; the backward pass keeps '
        f'{saved / 2**20:.2f} MiB per image', flush=True)
  if _JSON.value:
    print(json.dumps(record), flush=True)
  return 0


if __name__ == '__main__':
  cli.run(main)
