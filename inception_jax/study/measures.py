"""What a study reads off one finished run: its training curves, its final metrics and, from the
gradient-flow probe's records (`gradient_flow.Gradients`), how much gradient each head sends to each block.
"""

from __future__ import annotations

import json
import math
import os

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


def _mean(x) -> float:
  x = np.asarray(x, float)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else math.nan


def gradient_measures(g: gradient_flow.Gradients, total_steps: int, early_fraction: float) -> dict[str, float]:
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
  if g.aux_heads:
    share = np.nanmedian(g.aux_share()[g.index(g.lower)], axis=0)
    cos = [g.cos_to_main(head)[g.index(info['upstream'])] for head, info in g.aux_heads.items()]
  out = {}
  for name, w in windows.items():
    out[f'{name}_main_decay'] = _mean(decay[w])
    if g.aux_heads:
      out[f'{name}_aux_share'] = _mean(share[w])
      out[f'{name}_aux_cos'] = _mean(np.concatenate([c[:, w].ravel() for c in cos]))
  return out


def run_measures(result: dict, curves: dict[str, list[float]], gradients: gradient_flow.Gradients | None,
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
