"""Where a compiled step spends its time, op by op: a profiler trace joined to the optimised HLO.

A trace names each executed operation by its HLO instruction (a fusion, a library call such as a
convolution, a copy); the compiled program says what that instruction computes and which line of the
model it came from (its `op_name` metadata, e.g. `jvp(InceptionV3)/Mixed_6a/.../conv`). Joined, they
give a table of the most expensive operations and the step's time by kind of work: convolutions, matrix
products, reductions (BatchNorm statistics, norms), pooling, elementwise work, layout changes and
collectives, each split into forward pass, backward pass and the rest (optimizer update, metrics).

    python -m experiments.benchmark --model=v3 --batch=16 --size=299 --aux=off --profile=/tmp/v3_profile
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
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
      ops[instruction] = {'category': _category(inside), 'phase': _phase(source.group(1) if source else ''),
                          'source': source.group(1) if source else '', 'shape': shape}
  return ops


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


def op_seconds(trace_dir: str, module: str) -> dict[str, float]:
  """Total seconds per HLO instruction of `module` in the newest perfetto trace under `trace_dir`."""
  seconds: dict[str, float] = collections.Counter()
  for event in trace_events(trace_dir):
    args = event.get('args') or {}
    if event.get('ph') == 'X' and args.get('hlo_module') == module and args.get('hlo_op'):
      seconds[args['hlo_op']] += event.get('dur', 0) * 1e-6
  return dict(seconds)


def profile_table(hlo_text: str, trace_dir: str, steps: int) -> list[dict]:
  """Every traced operation of the compiled program `hlo_text`, most expensive first, with its
  milliseconds per step (summed over all threads and devices, so it can exceed the step's wall time
  where operations overlap), category, phase and source."""
  ops = parse_hlo(hlo_text)
  rows = []
  for name, seconds in op_seconds(trace_dir, module_name(hlo_text)).items():
    info = ops.get(name, {'category': 'other', 'phase': '', 'source': '', 'shape': ''})
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


def write(rows: list[dict], directory: str) -> tuple[str, str]:
  """Writes `ops.json` (every row) and `ops.md` (the tables) to `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = os.path.join(directory, 'ops.json'), os.path.join(directory, 'ops.md')
  with open(paths[0], 'w') as f:
    json.dump({'by_category': by_category(rows), 'ops': rows}, f, indent=1)
  with open(paths[1], 'w') as f:
    f.write(markdown(rows) + '\n')
  return paths
