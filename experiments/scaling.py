"""Throughput of a preset's train step on 1, 2, 4, ... devices: weak or strong scaling.

    python -m experiments.scaling --config=v3 --devices=1,2,4,8 --mode=weak --batch=32 --workdir=DIR
    python -m experiments.scaling --config=v3 --devices=1,2,4,8 --mode=strong --batch=256
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.scaling --config=v3 \\
        --devices=1,2,4,8 --config.image_size=75 --batch=8            # simulated devices on a CPU

For each count the step of experiments/imagenet.py runs on a sub-mesh of that many devices (the same
number from every process), on a synthetic batch made on the devices: compile time, the median step time,
images/s, scaling efficiency (images/s per device relative to one device), peak device memory where the
backend reports it, and the share of device time spent in collectives (from a profile of three steps).
`--mode=weak` keeps `--batch` images per device; `--mode=strong` keeps a global batch of `--batch`.
BatchNorm statistics follow the config: global (default) or `--config.bn_per_device=true`.

Writes `DIR/scaling.json` (a list of records: devices, images_per_sec, step_ms, compile_s, efficiency,
...), `DIR/scaling.md` (the table, also printed) and `DIR/scaling.png` (images/s and efficiency against
devices, with the ideal line). Without `--workdir` only the table is printed.

Several hosts: start one process per host with `--coordinator_address=HOST0:PORT --num_processes=N
--process_id=I` (or `--multihost` where JAX finds them); counts are then global.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import json
import math
import os
import re
import tempfile

from absl import flags

from experiments import cli, op_profile

cli.training_flags()

_DEVICES = flags.DEFINE_list('devices', None, 'device counts (default: 1, 2, 4, ... up to all devices)')
_MODE = flags.DEFINE_enum('mode', 'weak', ['weak', 'strong'],
                          'weak: --batch per device; strong: --batch in all')
_BATCH = flags.DEFINE_integer('batch', None, 'images per device (weak) or in all (strong); default: the '
                              "config's batch_size divided by the largest count (weak) or as is (strong)")
_STEPS = flags.DEFINE_integer('steps', 10, 'timed steps per device count (the median is reported)')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')
_PROFILE = flags.DEFINE_bool('profile', True, 'profile three steps per count for the collectives share')

# Op names of collectives in XLA profiles (CPU thunks, GPU NCCL kernels, TPU ops).
COLLECTIVE = re.compile(r'all-reduce|all_reduce|allreduce|all-gather|allgather|reduce-scatter|'
                        r'reducescatter|collective-permute|all-to-all|nccl', re.IGNORECASE)


def device_counts(spec: list[str] | None, available: int, processes: int) -> list[int]:
  if not spec:
    counts = [2 ** i for i in range(int(math.log2(available)) + 1)]
  else:
    try:
      counts = sorted({int(x) for x in spec})
    except ValueError:
      raise ValueError(f'--devices takes comma-separated integers, got {",".join(spec)!r}') from None
  bad = [n for n in counts if n < 1 or n > available or n % processes]
  if bad:
    hint = (' (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N devices)'
            if available == 1 else '')
    raise ValueError(f'--devices {",".join(map(str, bad))}: counts must be between 1 and the {available} '
                     f'devices and multiples of the {processes} processes{hint}')
  return counts


def sub_mesh_devices(n: int) -> list:
  """`n` devices, the same number from each process (a sub-mesh every process takes part in)."""
  import jax
  per_process = n // jax.process_count()
  return [d for p in range(jax.process_count())
          for d in [d for d in jax.devices() if d.process_index == p][:per_process]]


def collective_share(trace_dir: str, devices: int, step_s: float, steps: int = 3) -> float | None:
  """Mean fraction of each device's step time inside collective ops, from a perfetto trace."""
  try:
    events = op_profile.trace_events(trace_dir)
  except FileNotFoundError:
    return None
  busy_us = sum(e.get('dur', 0) for e in events if e.get('ph') == 'X' and COLLECTIVE.search(e.get('name', '')))
  return busy_us * 1e-6 / (devices * step_s * steps)


def run(config, counts: list[int], mode: str, batch: int, steps: int, warmup: int, profile: bool,
        scratch: str) -> list[dict]:
  import jax
  from inception_jax import step_timing
  records = []
  for n in counts:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.batch_size = batch * n if mode == 'weak' else batch
    if c.batch_size % n:
      raise ValueError(f'--batch {batch} is not divisible by {n} devices (strong scaling splits it)')
    trace_dir = os.path.join(scratch, f'trace_{n}') if profile else None
    m = step_timing.measure_train_step(c, steps, warmup, devices=sub_mesh_devices(n), trace_dir=trace_dir)
    records.append({
        'devices': n, 'processes': jax.process_count(), 'mode': mode, 'global_batch': c.batch_size,
        'per_device_batch': c.batch_size // n, 'images_per_sec': c.batch_size / m['step_s'],
        'step_ms': 1e3 * m['step_s'], 'compile_s': m['compile_s'], 'loss': m['loss'],
        'peak_memory_bytes': m['peak_memory_bytes'],
        'collective_share': collective_share(trace_dir, n, m['step_s']) if profile else None,
        'bn': 'per_device' if c.bn_per_device else 'global', 'model': c.model, 'image_size': c.image_size,
        'dtype': c.dtype, 'platform': jax.devices()[0].platform, 'device_kind': jax.devices()[0].device_kind,
    })
    print(f'{n} device(s): {records[-1]["images_per_sec"]:.1f} img/s, {records[-1]["step_ms"]:.0f} ms/step, '
          f'compile {m["compile_s"]:.1f} s', flush=True)
  base_rate = next((r['images_per_sec'] for r in records if r['devices'] == 1), None)
  for r in records:
    r['efficiency'] = r['images_per_sec'] / (r['devices'] * base_rate) if base_rate else None
  return records


def table(records: list[dict]) -> str:
  def fmt(v, spec):
    return '–' if v is None else format(v, spec)

  first = records[0]
  lines = [f'{first["model"]} at {first["image_size"]} px, {first["dtype"]}, {first["mode"]} scaling, '
           f'BN {first["bn"]}, {first["device_kind"]}', '',
           '| devices | global batch | per device | images/s | step ms | compile s | efficiency | '
           'peak memory GiB | collectives |',
           '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in records:
    memory = None if r['peak_memory_bytes'] is None else r['peak_memory_bytes'] / 2 ** 30
    lines.append(f'| {r["devices"]} | {r["global_batch"]} | {r["per_device_batch"]} | '
                 f'{r["images_per_sec"]:.1f} | {r["step_ms"]:.1f} | {r["compile_s"]:.1f} | '
                 f'{fmt(r["efficiency"], ".0%")} | {fmt(memory, ".2f")} | {fmt(r["collective_share"], ".0%")} |')
  return '\n'.join(lines)


def plot(records: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n = [r['devices'] for r in records]
  rate = [r['images_per_sec'] for r in records]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(n, rate, 'o-', label='measured')
  one = next((r['images_per_sec'] for r in records if r['devices'] == 1), None)
  if one:
    ax.plot(n, [one * k for k in n], '--', color='gray', label='ideal (linear)')
  ax.set_xscale('log', base=2)
  ax.set_xticks(n, [str(k) for k in n])
  ax.set_xlabel('devices')
  ax.set_ylabel('images / s')
  if one:
    eff = ax.twinx()
    eff.plot(n, [100 * r['efficiency'] for r in records], 's:', color='tab:red', label='efficiency')
    eff.set_ylabel('efficiency (%)', color='tab:red')
    eff.set_ylim(0, 110)
  ax.legend(loc='upper left')
  ax.set_title(f'{records[0]["model"]}: {records[0]["mode"]} scaling')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  import jax
  cli.start_distributed()
  config = cli.config()
  workdir = flags.FLAGS.workdir   # optional here: where the table and plot go
  try:
    from inception_jax import models
    info = models.model_info(config.model)
    with config.unlocked():
      config.image_size = config.image_size or info.input_size
      config.aux_logits = (config.aux_logits and info.num_aux_heads > 0
                           and config.image_size >= info.min_aux_input_size)
    counts = device_counts(_DEVICES.value, jax.device_count(), jax.process_count())
    batch = _BATCH.value or (config.batch_size // max(counts) if _MODE.value == 'weak' else config.batch_size)
    if batch < 1 or _STEPS.value < 1:
      raise ValueError(f'--batch and --steps must be positive, got {batch} and {_STEPS.value}')
    if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
      raise ValueError(f'workdir {workdir!r} exists and is not a directory')
    cli.enable_compilation_cache()
    with tempfile.TemporaryDirectory() as scratch:
      records = run(config, counts, _MODE.value, batch, _STEPS.value, _WARMUP.value, _PROFILE.value, scratch)
  except ValueError as e:
    cli.fail(e)
  text = table(records)
  print(text, flush=True)
  if workdir and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'scaling.json'), 'w') as f:
      json.dump(records, f, indent=1)
    with open(os.path.join(workdir, 'scaling.md'), 'w') as f:
      f.write(text + '\n')
    plot(records, os.path.join(workdir, 'scaling.png'))
    print(f'wrote {workdir}/scaling.json, scaling.md, scaling.png', flush=True)


if __name__ == '__main__':
  cli.run(main, parser=cli.parse_training)
