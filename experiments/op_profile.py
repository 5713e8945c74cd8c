"""Where a compiled step spends its time, op by op: a profiler trace joined to the optimised HLO.

A trace names each executed operation by its HLO instruction (a fusion, a library call such as a
convolution, a copy); the compiled program says what that instruction computes and which line of the
model it came from (its `op_name` metadata, e.g. `jvp(InceptionV3)/Mixed_6a/.../conv`). Joined, they
give a table of the most expensive operations and the step's time by kind of work: convolutions, matrix
products, reductions (BatchNorm statistics, norms), pooling, elementwise work, layout changes and
collectives, each split into forward pass, backward pass and the rest (optimizer update, metrics).

On a GPU the convolutions are cuDNN calls (custom calls `__cudnn$convForward`, `$convBackwardInput`,
`$convBackwardFilter`) and the matrix products cuBLAS or Triton ones; the trace's kernels run on the
device's streams (a process named `/device:GPU:<n>`), each kernel carrying the HLO instruction that
launched it. `step_breakdown` turns such a trace into the step's time by kind (the convolution's forward
pass and its two backward products apart), the device's idle gaps between kernels, and the longest
kernels.

    python -m experiments.benchmark --model=v3 --batch=16 --size=299 --aux=off --profile=/tmp/v3_profile
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import math
import os
import re
from typing import Iterable

CATEGORIES = ('convolution', 'matmul', 'reduction', 'pooling', 'collective', 'layout', 'elementwise',
              'other')
COLLECTIVES = {'all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute',
               'all-reduce-start', 'all-gather-start', 'collective-permute-start'}
# Operations that only move data (a fusion of nothing else is a layout change).
LAYOUT = {'copy', 'transpose', 'concatenate', 'pad', 'slice', 'dynamic-slice', 'dynamic-update-slice',
          'reverse', 'bitcast', 'reshape', 'broadcast', 'parameter', 'constant', 'tuple', 'get-tuple-element'}

_COMPUTATION = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\(')


def parse_hlo(text: str) -> dict[str, dict]:
  """{instruction name: {'category', 'phase', 'source', 'shape'}} for every instruction of the entry
  computation (and the computations it calls outside fusions) of an optimised HLO module's text."""
  computations: dict[str, list[str]] = {}
  current = None
  for line in text.splitlines():
    match = _COMPUTATION.match(line) if line and not line[0].isspace() else None
    if match:
      current = match.group(2)
      computations[current] = []
    elif current is not None and line.startswith(' '):
      computations[current].append(line)

  def opcodes(computation: str) -> set[str]:
    return {m.group(3) for m in map(_INSTRUCTION.match, computations.get(computation, [])) if m}

  ops = {}
  fused = {m.group(1) for lines in computations.values() for line in lines
           for m in [re.search(r'kind=k\w+, calls=%?([\w.\-]+)', line)] if m}
  for name, lines in computations.items():
    if name in fused:
      continue
    for line in lines:
      m = _INSTRUCTION.match(line)
      if not m:
        continue
      instruction, shape, opcode = m.groups()
      inside = {opcode}
      called = re.search(r'calls=%?([\w.\-]+)', line)
      if opcode == 'fusion' and called:
        inside = opcodes(called.group(1))
      source = re.search(r'op_name="([^"]*)"', line)
      target = re.search(r'custom_call_target="([^"]*)"', line)
      category = _category(inside)
      if target or 'triton_gemm' in line:
        category = _library_category(target.group(1) if target else '__triton_gemm', category)
      phase = _phase(source.group(1) if source else '')
      ops[instruction] = {'category': category, 'phase': phase, 'source': source.group(1) if source else '',
                          'shape': shape, 'work': _work(category, phase, target.group(1) if target else '')}
  return ops


def _library_category(target: str, fallback: str) -> str:
  """The kind of work of a library call: cuDNN convolutions, cuBLAS/cuBLASLt/Triton matrix products."""
  lowered = target.lower()
  if 'conv' in lowered:
    return 'convolution'
  if 'gemm' in lowered or 'matmul' in lowered or 'cublas' in lowered:
    return 'matmul'
  return fallback


# What `step_breakdown` reports, in this order.
WORK = ('convolution forward', 'convolution backward: input gradient', 'convolution backward: kernel gradient',
        'convolution backward', 'matrix products', 'reductions (BatchNorm statistics, norms)',
        'elementwise fusions (BatchNorm, activations)', 'pooling', 'layout: transposes and copies',
        'optimizer update and metrics', 'collectives', 'memory copies', 'other')


def _work(category: str, phase: str, target: str) -> str:
  """The row of `WORK` an instruction's time goes to."""
  if category == 'convolution':
    if 'BackwardInput' in target:
      return 'convolution backward: input gradient'
    if 'BackwardFilter' in target:
      return 'convolution backward: kernel gradient'
    if 'Forward' in target or phase == 'forward':
      return 'convolution forward'
    return 'convolution backward'   # XLA's own convolution: the backward pass's two products alike
  if category == 'matmul':
    return 'matrix products'
  if category == 'collective':
    return 'collectives'
  if category == 'layout':
    return 'layout: transposes and copies'
  if phase == 'rest':
    return 'optimizer update and metrics'
  return {'reduction': 'reductions (BatchNorm statistics, norms)', 'pooling': 'pooling',
          'elementwise': 'elementwise fusions (BatchNorm, activations)'}.get(category, 'other')


def _category(opcodes: set[str]) -> str:
  if 'convolution' in opcodes:
    return 'convolution'
  if 'dot' in opcodes:
    return 'matmul'
  if opcodes & COLLECTIVES:
    return 'collective'
  if opcodes & {'reduce-window', 'select-and-scatter'}:
    return 'pooling'
  if 'reduce' in opcodes:
    return 'reduction'
  if opcodes <= LAYOUT:
    return 'layout'
  if opcodes & {'while', 'conditional', 'call', 'custom-call', 'sort', 'rng-bit-generator'}:
    return 'other'
  return 'elementwise'


def _phase(source: str) -> str:
  """forward / backward from JAX's autodiff names in the metadata; 'rest' for what follows the gradient
  (optimizer, metrics); '' where XLA made the operation up without a source."""
  if not source:
    return ''
  if 'transpose(jvp' in source:
    return 'backward'
  if 'jvp(' in source:
    return 'forward'
  return 'rest'


def module_name(text: str) -> str:
  match = re.match(r'\s*HloModule\s+([\w.\-]+)', text)
  if not match:
    raise ValueError('not an HLO module text: it does not start with "HloModule <name>"')
  return match.group(1)


def trace_events(trace_dir: str) -> list[dict]:
  """The events of the newest perfetto trace under `trace_dir` (as `jax.profiler` writes it)."""
  paths = glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {trace_dir}')
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    trace = json.load(f)
  return trace['traceEvents'] if isinstance(trace, dict) else trace


_DEVICE = re.compile(r'/device:(GPU|TPU):\d+')


def device_events(events: list[dict]) -> list[dict]:
  """The complete ('X') events that ran on an accelerator (processes named `/device:GPU:<n>` or
  `/device:TPU:<n>`), kernels and memory copies alike; on a host without one, every complete event (the
  CPU's operations run on host threads). Host-side events that only launch a device's work are left out,
  so nothing counts twice."""
  devices = {e['pid'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and _DEVICE.search(str((e.get('args') or {}).get('name', '')))}
  return [e for e in events if e.get('ph') == 'X' and (not devices or e.get('pid') in devices)]


def op_seconds(trace_dir: str, module: str) -> dict[str, float]:
  """Total seconds per HLO instruction of `module` in the newest perfetto trace under `trace_dir`."""
  seconds: dict[str, float] = collections.Counter()
  for event in device_events(trace_events(trace_dir)):
    args = event.get('args') or {}
    if args.get('hlo_module') == module and args.get('hlo_op'):
      seconds[args['hlo_op']] += event.get('dur', 0) * 1e-6
  return dict(seconds)


def _busy(intervals: list[tuple[float, float]]) -> float:
  """The length of the union of [start, end) intervals."""
  total, end = 0.0, -math.inf
  for a, b in sorted(intervals):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def step_breakdown(hlo_text: str, trace_dir: str, steps: int, top: int = 15) -> dict:
  """Where a traced step's time goes on its device, as milliseconds per step.

  Returns {'step_ms': from the first kernel's start to the last one's end, per step; 'busy_ms': time
  some kernel or copy ran; 'idle_ms': the rest, the gaps between kernels (launch overhead, host waits);
  'work': {WORK row: ms}, each device event counted once under the instruction that launched it
  (kernels the program did not launch, such as the input's copies, under 'memory copies' or 'other');
  'top_kernels': the `top` longest kernels by name, with ms per step, share of busy time, a launching
  instruction and its row of WORK}. Overlapping kernels (several streams) make the rows' sum exceed
  busy_ms.
  """
  module = module_name(hlo_text)
  ops = parse_hlo(hlo_text)
  events = [e for e in device_events(trace_events(trace_dir)) if e.get('dur')]
  if not events:
    raise ValueError(f'the trace under {trace_dir} has no device events')
  intervals = [(float(e['ts']), float(e['ts']) + float(e['dur'])) for e in events]
  span = max(b for _, b in intervals) - min(a for a, _ in intervals)
  busy = _busy(intervals)
  work: dict[str, float] = collections.Counter()
  kernels: dict[str, dict] = {}
  for event in events:
    args = event.get('args') or {}
    op = args.get('hlo_op') if args.get('hlo_module') in (module, None) else None
    if op in ops:
      row = ops[op]['work']
    elif re.search(r'mem(cpy|set)', str(event.get('name', '')), re.I):
      row = 'memory copies'
    else:
      row = 'other'
    ms = float(event['dur']) * 1e-3 / steps
    work[row] += ms
    kernel = kernels.setdefault(str(event.get('name', '')), {'ms_per_step': 0.0, 'hlo_op': op or '', 'work': row})
    kernel['ms_per_step'] += ms
  longest = sorted(kernels.items(), key=lambda item: -item[1]['ms_per_step'])[:top]
  busy_ms = busy * 1e-3 / steps
  return {'steps': steps, 'step_ms': span * 1e-3 / steps, 'busy_ms': busy_ms,
          'idle_ms': (span - busy) * 1e-3 / steps,
          'work': {row: work[row] for row in WORK if work.get(row)},
          'top_kernels': [{'kernel': name, **k, 'share_of_busy': k['ms_per_step'] / busy_ms if busy_ms else None}
                          for name, k in longest]}


def breakdown_markdown(breakdown: dict) -> str:
  """The breakdown as two tables: the step's time by kind of work (idle gaps included), the longest
  kernels."""
  step = breakdown['step_ms']
  lines = ['| where the step goes | ms/step | share of the step |', '|---|---:|---:|']
  for row, ms in breakdown['work'].items():
    lines.append(f'| {row} | {ms:.2f} | {100 * ms / step:.1f}% |')
  lines.append(f'| idle gaps between kernels | {breakdown["idle_ms"]:.2f} | {100 * breakdown["idle_ms"] / step:.1f}% |')
  lines.append(f'| step (first kernel to last) | {step:.2f} | 100% |')
  lines += ['', '| kernel | ms/step | share of busy time | launched by | kind |', '|---|---:|---:|---|---|']
  for k in breakdown['top_kernels']:
    share = '' if k['share_of_busy'] is None else f'{100 * k["share_of_busy"]:.1f}%'
    lines.append(f'| `{k["kernel"][:80]}` | {k["ms_per_step"]:.2f} | {share} | {k["hlo_op"] or "-"} | {k["work"]} |')
  return '\n'.join(lines)


def profile_table(hlo_text: str, trace_dir: str, steps: int) -> list[dict]:
  """Every traced operation of the compiled program `hlo_text`, most expensive first, with its
  milliseconds per step (summed over all threads and devices, so it can exceed the step's wall time
  where operations overlap), category, phase and source."""
  ops = parse_hlo(hlo_text)
  rows = []
  for name, seconds in op_seconds(trace_dir, module_name(hlo_text)).items():
    info = ops.get(name, {'category': 'other', 'phase': '', 'source': '', 'shape': '', 'work': 'other'})
    rows.append({'op': name, 'ms_per_step': 1e3 * seconds / steps, **info})
  if not rows:
    raise ValueError(f'the trace under {trace_dir} has no operations of {module_name(hlo_text)}')
  return sorted(rows, key=lambda r: -r['ms_per_step'])


def by_category(rows: Iterable[dict]) -> dict[str, dict[str, float]]:
  """{category: {phase or 'total': ms per step}}, categories in `CATEGORIES` order, empty ones left out."""
  table: dict[str, dict[str, float]] = {}
  for row in rows:
    entry = table.setdefault(row['category'], collections.Counter())
    entry[row['phase'] or 'unattributed'] += row['ms_per_step']
    entry['total'] += row['ms_per_step']
  return {c: dict(table[c]) for c in CATEGORIES if c in table}


def markdown(rows: list[dict], top: int = 20) -> str:
  total = sum(r['ms_per_step'] for r in rows)
  lines = ['| kind | ms/step | share | forward | backward | rest | unattributed |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for category, t in by_category(rows).items():
    lines.append(f'| {category} | {t["total"]:.1f} | {100 * t["total"] / total:.1f}% | '
                 + ' | '.join(f'{t.get(p, 0.0):.1f}' for p in ('forward', 'backward', 'rest', 'unattributed'))
                 + ' |')
  lines.append(f'| all | {total:.1f} | 100% | | | | |')
  lines += ['', '| op | ms/step | kind | phase | shape | source |', '|---|---:|---|---|---|---|']
  for r in rows[:top]:
    source = r['source'].split('/', 1)[-1]
    lines.append(f'| {r["op"]} | {r["ms_per_step"]:.1f} | {r["category"]} | {r["phase"] or "-"} | '
                 f'`{r["shape"]}` | {source[-90:]} |')
  return '\n'.join(lines)


def write(rows: list[dict], directory: str, breakdown: dict | None = None) -> tuple[str, str]:
  """Writes `ops.json` (every row, and `step_breakdown`'s result when given) and `ops.md` (the tables) to
  `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = os.path.join(directory, 'ops.json'), os.path.join(directory, 'ops.md')
  with open(paths[0], 'w') as f:
    json.dump({'by_category': by_category(rows), 'ops': rows,
               **({'breakdown': breakdown} if breakdown else {})}, f, indent=1)
  with open(paths[1], 'w') as f:
    f.write((breakdown_markdown(breakdown) + '\n\n' if breakdown else '') + markdown(rows) + '\n')
  return paths
