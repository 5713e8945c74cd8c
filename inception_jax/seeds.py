"""A result over seeds: one config trained once per seed, and the final metrics' median, spread and
mean ± sd. One run is one draw of the initialisation, the data order and the augmentation; a number worth
reporting is a distribution over several.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import time
from typing import Callable, Sequence

import ml_collections

RESULT_FILE = 'result.json'


def parse_seeds(value: str) -> list[int]:
  """'3' -> [0, 1, 2]; '0,5,7' -> [0, 5, 7]. Anything else is one clear error."""
  parts = [p.strip() for p in str(value).split(',')]
  try:
    numbers = [int(p) for p in parts]
  except ValueError:
    numbers = None
  if not numbers or (len(numbers) == 1 and numbers[0] < 1) or len(set(numbers)) != len(numbers):
    raise ValueError(f'seeds must be a count (e.g. 3 for seeds 0, 1, 2) or a comma-separated list of distinct '
                     f'integers (e.g. 0,5,7), got {value!r}')
  return list(range(numbers[0])) if len(numbers) == 1 and ',' not in str(value) else numbers


def run(config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int],
        train_fn: Callable[[ml_collections.ConfigDict, str], dict]) -> list[dict]:
  """Trains `config` with each seed in `workdir/seed_<seed>/` and returns each run's final metrics.

  A seed whose run finished before (its `result.json`) is read, not run again; an interrupted one resumes
  from its checkpoint. Each result holds the run's final metrics, its `seed` and `wall_s`, the seconds the
  invocation that finished it took (compilation and evaluation included).
  """
  results = []
  for seed in seeds:
    run_dir = os.path.join(workdir, f'seed_{seed}')
    path = os.path.join(run_dir, RESULT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        results.append(json.load(f))
      print(f'--- seed {seed}: finished before', flush=True)
      continue
    print(f'--- seed {seed}', flush=True)
    seeded = copy.deepcopy(config)
    with seeded.unlocked():
      seeded.seed = seed
    start = time.perf_counter()
    result = {**train_fn(seeded, run_dir), 'seed': seed, 'wall_s': time.perf_counter() - start}
    with open(path + '.tmp', 'w') as f:
      json.dump(result, f)
    os.replace(path + '.tmp', path)   # a seed counts as finished only once this is whole
    results.append(result)
  return results


def summarize(results: Sequence[dict]) -> dict[str, dict]:
  """For every number all results have (besides `seed`): n, median, mean, sd (sample; 0 for one run),
  min, max, spread (max − min) and the values in seed order."""
  keys = [k for k, v in results[0].items()
          if k != 'seed' and isinstance(v, (int, float)) and all(k in r for r in results)]
  summary = {}
  for key in keys:
    values = [float(r[key]) for r in results]
    summary[key] = {
        'n': len(values), 'median': statistics.median(values), 'mean': statistics.fmean(values),
        'sd': statistics.stdev(values) if len(values) > 1 else 0.0, 'min': min(values), 'max': max(values),
        'spread': max(values) - min(values), 'values': values}
  return summary


def _format(key: str, value: float) -> str:
  if math.isnan(value):
    return 'nan'
  if key.endswith(('top1', 'top5')):
    return f'{100 * value:.2f}'
  if key == 'wall_s':
    return f'{value:.0f}'
  return f'{value:.4g}'


def table(summary: dict[str, dict], seeds: Sequence[int]) -> str:
  """A markdown table, one row per metric (accuracies in %)."""
  lines = [f'| metric | median | mean ± sd | min | max | max − min | seeds {", ".join(map(str, seeds))} |',
           '|---|---|---|---|---|---|---|']
  for key, s in summary.items():
    f = lambda v: _format(key, v)  # noqa: E731
    unit = ' (%)' if key.endswith(('top1', 'top5')) else ''
    lines.append(f'| {key}{unit} | {f(s["median"])} | {f(s["mean"])} ± {f(s["sd"])} | {f(s["min"])} | '
                 f'{f(s["max"])} | {f(s["spread"])} | {" / ".join(f(v) for v in s["values"])} |')
  return '\n'.join(lines)
