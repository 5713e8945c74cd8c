"""What a study reads off one finished run: its training curves, its final metrics and, from the
gradient-flow probe's records, how much gradient each head sends to each block.

Blocks differ in size, and BatchNorm makes a layer's output indifferent to its weights' scale, so blocks
are compared by the relative gradient ‖g‖/‖w‖ rather than by the raw norm alone. The side heads' share of
a block's gradient is ‖w·Σ g_aux‖ / (‖g_main‖ + ‖w·Σ g_aux‖), with w·Σ g_aux = g_total − g_main (its norm
follows from the recorded norms and the total's cosine to the main head).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from inception_jax import gradient_flow

TRAIN_CURVES = {'loss_main': 'train/loss_main', 'top1': 'train/top1', 'learning_rate': 'train/learning_rate'}


def read_curves(directory: str) -> dict[str, list[float]]:
  """The training curves in `directory/metrics.jsonl`: step, the main head's loss, top-1 (each the mean
  over the logging window ending at the step) and the learning rate. A step logged twice (a resumed run)
  keeps its last record."""
  by_step: dict[int, dict] = {}
  path = os.path.join(directory, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if 'train/top1' in record:
          by_step[int(record['step'])] = record
  steps = sorted(by_step)
  curves = {'step': steps}
  for name, key in TRAIN_CURVES.items():
    curves[name] = [float(by_step[s].get(key, math.nan)) for s in steps]
  return curves


def steps_to(curves: dict[str, list[float]], threshold: float) -> float:
  """The step at which the training top-1 first reaches `threshold`: the first crossing of the curve
  smoothed over three logging windows (centred, so it does not lag), interpolated between logged steps;
  NaN if it never does."""
  steps, top1 = np.asarray(curves['step'], float), np.asarray(curves['top1'], float)
  if steps.size == 0:
    return math.nan
  padded = np.concatenate([top1[:1], top1, top1[-1:]])
  smooth = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
  above = np.flatnonzero(smooth >= threshold)
  if above.size == 0:
    return math.nan
  i = int(above[0])
  if i == 0:
    return float(steps[0])
  # Linear between the last point below and the first at or above.
  fraction = (threshold - smooth[i - 1]) / (smooth[i] - smooth[i - 1])
  return float(steps[i - 1] + fraction * (steps[i] - steps[i - 1]))


def threshold_name(threshold: float) -> str:
  return f'steps_to_{round(100 * threshold):d}'


class Gradients:
  """A run's probe records as arrays: rows are the heads then 'total', blocks the recorded blocks.

  Attributes:
    steps: (S,) measured steps; rows; blocks; trunk; aux_heads (as `gradient_flow.describe_blocks`).
    norm: (R, B, S) ‖g‖ per row, block and step; cos: (R, R, B, S) cosines (NaN where a gradient is 0).
    param_norm: (B, S); param_count: (B,).
  """

  def __init__(self, steps, rows, blocks, trunk, aux_heads, norm, cos, param_norm, param_count):
    self.steps, self.rows, self.blocks, self.trunk, self.aux_heads = steps, rows, blocks, trunk, aux_heads
    self.norm, self.cos, self.param_norm = (np.asarray(a, float) for a in (norm, cos, param_norm))
    self.param_count = np.asarray(param_count, np.int64)

  @classmethod
  def from_records(cls, records: list[dict], blocks: dict[str, Any]) -> 'Gradients':
    steps = sorted({r['step'] for r in records})
    rows = list(dict.fromkeys(r['head'] for r in records))
    names = blocks['blocks']
    R, B, S = len(rows), len(names), len(steps)
    row, block, step = ({n: i for i, n in enumerate(x)} for x in (rows, names, steps))
    norm, cos = np.full((R, B, S), np.nan), np.full((R, R, B, S), np.nan)
    param_norm, param_count = np.full((B, S), np.nan), np.zeros(B, np.int64)
    for r in records:
      h, b, s = row[r['head']], block[r['block']], step[r['step']]
      norm[h, b, s] = r['grad_norm']
      for other, value in r['cos'].items():
        cos[h, row[other], b, s] = np.nan if value is None else value
      param_norm[b, s] = r['param_norm']
      param_count[b] = r['param_count']
    return cls(steps, rows, names, blocks['trunk'], blocks['aux_heads'], norm, cos, param_norm, param_count)

  @classmethod
  def read(cls, directory: str) -> 'Gradients | None':
    """A run directory's records (None when the probe did not run there)."""
    path = os.path.join(directory, 'gradient_flow.jsonl')
    if not os.path.exists(path):
      return None
    with open(os.path.join(directory, gradient_flow.BLOCKS_FILE)) as f:
      blocks = json.load(f)
    return cls.from_records(gradient_flow.read_records(path), blocks)

  def to_json(self) -> dict:
    """Compact arrays for study.json (NaN as null); `from_json` reads them back."""
    return {'steps': self.steps, 'rows': self.rows, 'blocks': self.blocks, 'trunk': self.trunk,
            'aux_heads': self.aux_heads, 'grad_norm': _rounded(self.norm), 'cos': _rounded(self.cos),
            'param_norm': _rounded(self.param_norm), 'param_count': self.param_count.tolist()}

  @classmethod
  def from_json(cls, d: dict) -> 'Gradients':
    floats = lambda x: np.array(x, dtype=float)  # noqa: E731  (null -> NaN)
    return cls(d['steps'], d['rows'], d['blocks'], d['trunk'], d['aux_heads'], floats(d['grad_norm']),
               floats(d['cos']), floats(d['param_norm']), d['param_count'])

  def index(self, names) -> list[int]:
    return [self.blocks.index(n) for n in names]

  def relative(self, row: str) -> np.ndarray:
    """(B, S) ‖g‖/‖w‖ of `row`'s gradient."""
    with np.errstate(divide='ignore', invalid='ignore'):
      return self.norm[self.rows.index(row)] / self.param_norm

  def aux_share(self) -> np.ndarray:
    """(B, S) the side heads' share of each block's gradient (NaN where neither head reaches it)."""
    main, total = self.rows.index('main'), self.rows.index('total')
    m, t = self.norm[main], self.norm[total]
    cos = np.nan_to_num(self.cos[total, main], nan=0.0)
    aux = np.sqrt(np.maximum(t ** 2 + m ** 2 - 2 * t * m * cos, 0.0))
    with np.errstate(divide='ignore', invalid='ignore'):
      return np.where(m + aux > 0, aux / (m + aux), np.nan)

  @property
  def lower(self) -> list[str]:
    """The trunk blocks below the first side head's branch point (its input included): where GoogLeNet
    expected the side heads' gradient to matter."""
    first = next(iter(self.aux_heads.values()), None)
    return first['upstream'] if first else []

  @property
  def stem_and_top(self) -> tuple[str, str]:
    """The first trunk block and the last one below the classifier."""
    return self.trunk[0], self.trunk[-2] if len(self.trunk) > 1 else self.trunk[-1]

  def window(self, start: float, stop: float) -> np.ndarray:
    """Boolean (S,): the measured steps in [start, stop)."""
    steps = np.asarray(self.steps, float)
    return (steps >= start) & (steps < stop)

def _rounded(a: np.ndarray):
  return [_rounded(x) for x in a] if a.ndim else (None if not np.isfinite(a) else float(f'{a:.6g}'))


def _mean(x) -> float:
  x = np.asarray(x, float)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else math.nan


def gradient_measures(g: Gradients, total_steps: int, early_fraction: float) -> dict[str, float]:
  """Scalars of the probe's records, each for the early part of the run (the first `early_fraction` of
  its steps) and the late part (the last `early_fraction`), means over the measurements there:

    {early,late}_main_decay: log10 of the main head's ‖g‖/‖w‖ in the first trunk block over that in the
      last block below the classifier (negative: the main gradient fades on its way down).
    {early,late}_aux_share: the side heads' share of the gradient (median over the blocks below the first
      side head).
    {early,late}_aux_cos: the cosine of each side head's gradient to the main head's (mean over the
      heads and the trunk blocks each reaches).
  """
  windows = {'early': g.window(0, early_fraction * total_steps),
             'late': g.window((1 - early_fraction) * total_steps, total_steps + 1)}
  stem, top = g.index(g.stem_and_top)
  relative = g.relative('main')
  with np.errstate(divide='ignore', invalid='ignore'):
    decay = np.log10(relative[stem] / relative[top])
  out = {}
  for name, w in windows.items():
    out[f'{name}_main_decay'] = _mean(decay[w])
    if g.aux_heads:
      share = np.nanmedian(g.aux_share()[g.index(g.lower)], axis=0) if g.lower else np.full(len(g.steps), np.nan)
      main = g.rows.index('main')
      cos = [g.cos[g.rows.index(head), main][g.index(info['upstream'])][:, w]
             for head, info in g.aux_heads.items()]
      out[f'{name}_aux_share'] = _mean(share[w])
      out[f'{name}_aux_cos'] = _mean(np.concatenate([c.ravel() for c in cos]))
  return out


def run_measures(result: dict, curves: dict[str, list[float]], gradients: Gradients | None,
                 total_steps: int, thresholds: tuple[float, ...], early_fraction: float) -> dict[str, float]:
  """Every scalar a claim can name, for one run (accuracies in %, as points):

    test_top1, test_top5: the final evaluation on the test split;
    train_top1: the same network on its training examples (when the run evaluated them), and
    gap: train_top1 − test_top1;
    final_train_top1: the training curve's last window (dropout and augmentation on);
    steps_to_<T>: the step at which the training top-1 first reached T% (`steps_to`; NaN if never);
    the probe's scalars (`gradient_measures`), when it ran.
  """
  out = {'test_top1': 100 * result['eval/top1'], 'test_top5': 100 * result['eval/top5']}
  if 'eval_train/top1' in result:
    out['train_top1'] = 100 * result['eval_train/top1']
    out['gap'] = out['train_top1'] - out['test_top1']
  if curves['top1']:
    out['final_train_top1'] = 100 * curves['top1'][-1]
  for t in thresholds:
    out[threshold_name(t)] = steps_to(curves, t)
  if gradients is not None:
    out.update(gradient_measures(gradients, total_steps, early_fraction))
  return out
