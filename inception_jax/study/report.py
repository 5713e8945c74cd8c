"""A study's record and report: `study.json` (every condition × seed: curves, final metrics, measures,
gradient records; every claim's verdict) and `report.md` with its plots, from the finished runs.

Everything here reads the runs' files; nothing trains. Verdicts are computed from the measures in the
record (`claims.evaluate`), so the report's verdicts are the record's.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any, Sequence

import numpy as np

from inception_jax import gradient_flow
from inception_jax.study import claims as claims_lib
from inception_jax.study import measures as measures_lib
from inception_jax.study import runner

RECORD_FILE, REPORT_FILE = 'study.json', 'report.md'
# The config keys a condition's row of the report shows (the whole config is in each run's config.json).
SHOWN_KEYS = ('model', 'aux_logits', 'aux_weight', 'model_overrides.aux_bn', 'image_size', 'batch_size',
              'total_steps', 'optimizer', 'learning_rate', 'schedule', 'label_smoothing', 'weight_decay',
              'train_examples', 'dataset')


# --- statistics over seeds ------------------------------------------------------------------------------


def summarize(results: Sequence[dict]) -> dict[str, dict]:
  """For every number all results have (besides `seed`): n, median, mean, sd (sample; 0 for one run),
  min, max, spread (max − min) and the values in seed order. NaN values are left out of the statistics."""
  keys = [k for k, v in results[0].items()
          if k != 'seed' and isinstance(v, (int, float)) and not isinstance(v, bool)
          and all(k in r for r in results)]
  summary = {}
  for key in keys:
    values = [float(r[key]) for r in results]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
      summary[key] = {'n': 0, 'values': values}
      continue
    summary[key] = {
        'n': len(finite), 'median': statistics.median(finite), 'mean': statistics.fmean(finite),
        'sd': statistics.stdev(finite) if len(finite) > 1 else 0.0, 'min': min(finite), 'max': max(finite),
        'spread': max(finite) - min(finite), 'values': values}
  return summary


def _format(key: str, value: float) -> str:
  if value is None or math.isnan(value):
    return 'nan'
  if key.endswith(('top1', 'top5')):
    return f'{100 * value:.2f}'
  if key == 'wall_s':
    return f'{value:.0f}'
  return f'{value:.4g}'


def table(summary: dict[str, dict], seeds: Sequence[int]) -> str:
  """A markdown table of final metrics over seeds, one row per metric (accuracies in %)."""
  lines = [f'| metric | median | mean ± sd | min | max | max − min | seeds {", ".join(map(str, seeds))} |',
           '|---|---|---|---|---|---|---|']
  for key, s in summary.items():
    if not s['n']:
      continue
    f = lambda v: _format(key, v)  # noqa: E731
    unit = ' (%)' if key.endswith(('top1', 'top5')) else ''
    lines.append(f'| {key}{unit} | {f(s["median"])} | {f(s["mean"])} ± {f(s["sd"])} | {f(s["min"])} | '
                 f'{f(s["max"])} | {f(s["spread"])} | {" / ".join(f(v) for v in s["values"])} |')
  return '\n'.join(lines)


# --- the record -----------------------------------------------------------------------------------------


def _config_row(config) -> dict[str, Any]:
  row = {}
  for key in SHOWN_KEYS:
    node = config
    for part in key.split('.'):
      node = node.get(part) if node is not None and hasattr(node, 'get') else None
    row[key] = node
  return row


def _clean(x):
  """JSON without NaN (null instead)."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  return x


def collect(study: runner.Study, workdir: str, machine: str = '') -> dict[str, Any]:
  """The study's record from its finished runs (unfinished ones are left out and listed)."""
  conditions, measures, missing, wall = [], {}, [], 0.0
  for condition in study.conditions:
    runs = {}
    for seed in study.seeds:
      result = runner.read_result(workdir, condition.name, seed)
      if result is None:
        missing.append(f'{condition.name or "."}/seed_{seed}')
        continue
      directory = runner.run_dir(workdir, condition.name, seed)
      curves = measures_lib.read_curves(directory)
      gradients = gradient_flow.Gradients.read(directory)
      total_steps = curves['step'][-1] if curves['step'] else 0
      m = measures_lib.run_measures(result, curves, gradients, total_steps, study.thresholds,
                                    study.early_fraction)
      measures.setdefault(condition.name, {})[seed] = m
      wall += result.get('wall_s', 0.0)
      runs[str(seed)] = {'result': result, 'measures': m, 'curves': curves,
                         'gradients': gradients.to_json() if gradients is not None else None}
    stats = summarize([{**m, 'seed': s} for s, m in measures.get(condition.name, {}).items()]) if runs else {}
    conditions.append({'name': condition.name, 'group': condition.group, 'description': condition.description,
                       'config': _config_row(condition.config), 'runs': runs, 'summary': stats})
  verdicts = [claims_lib.evaluate(c, measures).to_json() for c in study.claims]
  return _clean({
      'study': study.name, 'scale': study.scale, 'question': study.question, 'command': study.command,
      'seeds': list(study.seeds), 'thresholds': list(study.thresholds), 'early_fraction': study.early_fraction,
      'probe_every': study.probe_every, 'conditions': conditions, 'claims': verdicts,
      'missing_runs': missing, 'wall_s': wall, 'machine': machine})


def verdicts_from_record(record: dict, study: runner.Study) -> list[dict]:
  """The claims of `study` tested on the measures a record holds (how a reader checks a record's
  verdicts: they must equal its 'claims')."""
  measures = {c['name']: {int(s): run['measures'] for s, run in c['runs'].items()} for c in record['conditions']}
  nan = lambda m: {k: (math.nan if v is None else v) for k, v in m.items()}  # noqa: E731
  measures = {c: {s: nan(m) for s, m in runs.items()} for c, runs in measures.items()}
  return [_clean(claims_lib.evaluate(c, measures).to_json()) for c in study.claims]


# --- report.md ------------------------------------------------------------------------------------------


def _cell(stats: dict | None, digits: int = 2) -> str:
  """'median [min – max]' over seeds, and how many seeds have a value where some do not (a threshold some
  runs never reached)."""
  if not stats or not stats.get('n'):
    return '–'
  f = lambda v: f'{v:.{digits}f}'  # noqa: E731
  text = f(stats['median']) if stats['n'] == 1 else f'{f(stats["median"])} [{f(stats["min"])} – {f(stats["max"])}]'
  if stats['n'] < len(stats['values']):
    text += f' ({stats["n"]} of {len(stats["values"])} seeds)'
  return text


def _mean_sd(stats: dict | None, digits: int = 2) -> str:
  if not stats or not stats.get('n'):
    return '–'
  return f'{stats["mean"]:.{digits}f} ± {stats["sd"]:.{digits}f}'


def _duration(seconds: float) -> str:
  h, rest = divmod(int(round(seconds)), 3600)
  return f'{h} h {rest // 60:02d} min' if h else f'{rest // 60} min {rest % 60:02d} s'


def markdown(record: dict, plots: Sequence[str] = ()) -> str:
  """The report: question, method, per-condition tables, the probe's measures, the claims' verdicts."""
  lines = [f'# Study `{record["study"]}` (scale: {record["scale"]})', '', record['question'], '']
  if record['command']:
    lines += ['```bash', record['command'], '```', '']
  seeds = ', '.join(map(str, record['seeds']))
  lines += [f'Seeds {seeds} per condition. The runs took {_duration(record["wall_s"])} in all '
            f'(compilation, probe and evaluation included){"; " + record["machine"] if record["machine"] else ""}.']
  if record['missing_runs']:
    lines += ['', f'**Not finished:** {", ".join(record["missing_runs"])}.']
  lines += ['', '## Conditions', '',
            '| condition | what | model | aux | input | steps × batch | update rule, lr | train images |',
            '|---|---|---|---|---|---|---|---|']
  for c in record['conditions']:
    k = {key: '–' if v is None else f'{v:g}' if isinstance(v, float) else v for key, v in c['config'].items()}
    aux = ('off' if not c['config']['aux_logits'] else
           f'on, weight {k["aux_weight"]}' + (', BN' if c['config'].get('model_overrides.aux_bn') else ''))
    lines.append(f'| `{c["name"]}` | {c["description"]} | {k["model"]} | {aux} | {k["image_size"]} px | '
                 f'{k["total_steps"]} × {k["batch_size"]} | {k["optimizer"]}, {k["learning_rate"]} | '
                 f'{c["config"]["train_examples"] or "all"} |')
  thresholds = record['thresholds']
  lines += ['', '## Results', '', 'Median [min – max] over seeds; accuracies in %. Test: the whole test split; '
            'train (eval): the training images without augmentation, evaluated like the test images; gap: '
            'their difference. Steps to T%: where the training top-1 (window means, dropout on, smoothed over '
            'three windows) first reached T%.', '']
  header = ['condition', 'test top-1', 'test top-1 mean ± sd', 'test top-5', 'train (eval) top-1', 'gap'] + \
      [f'steps to {round(100 * t)}%' for t in thresholds]
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for c in record['conditions']:
    s = c['summary']
    cells = [f'`{c["name"]}`', _cell(s.get('test_top1')), _mean_sd(s.get('test_top1')), _cell(s.get('test_top5')),
             _cell(s.get('train_top1')), _cell(s.get('gap'))]
    cells += [_cell(s.get(measures_lib.threshold_name(t)), 0) for t in thresholds]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if any(c['summary'].get('early_main_decay') for c in record['conditions']):
    lines += ['', '## Gradient flow', '',
              f'From the probe, every {record["probe_every"]} steps: early = the first '
              f'{record["early_fraction"]:.0%} of the run, late = the last {record["early_fraction"]:.0%}. '
              'Main decay: log10 of the main head\'s ‖g‖/‖w‖ in the first block over that in the last block '
              'below the classifier (−1: ten times smaller at the stem). Aux share: ‖w·Σ g_aux‖ / (‖g_main‖ + '
              '‖w·Σ g_aux‖), median over the blocks below the first side head. Aux cosine: of each side head\'s '
              'gradient to the main head\'s, mean over the blocks it reaches.', '',
              '| condition | main decay early | late | aux share early | late | aux cosine early | late |',
              '|---|---|---|---|---|---|---|']
    for c in record['conditions']:
      s = c['summary']
      cells = [_cell(s.get(k)) for k in ('early_main_decay', 'late_main_decay', 'early_aux_share',
                                         'late_aux_share', 'early_aux_cos', 'late_aux_cos')]
      lines.append(f'| `{c["name"]}` | ' + ' | '.join(cells) + ' |')
  if record['claims']:
    lines += ['', '## Claims and verdicts', '',
              'Each claim\'s quantity is computed per seed (seed s of every condition it names), then its 95% '
              'interval over the seeds (Student\'s t). The criteria were fixed before the runs.', '',
              '| claim | source | quantity per seed | expects | seeds\' values | mean [95% interval] | verdict |',
              '|---|---|---|---|---|---|---|']
    for v in record['claims']:
      values = ' / '.join('–' if x is None else f'{x:.3g}' for x in v['values'].values())
      expects = f'≥ {v["margin"]:g}' if v['expects'] == claims_lib.EFFECT else f'< {v["margin"]:g}'
      interval = ('–' if v['mean'] is None else
                  f'{v["mean"]:.3g} [{v["ci95"][0]:.3g}, {v["ci95"][1]:.3g}]')
      lines.append(f'| `{v["id"]}` | {v["source"]} | `{v["quantity"]}` ({v["unit"]}) | {expects} | {values} | '
                   f'{interval} | **{v["verdict"]}** |')
    lines.append('')
    for v in record['claims']:
      more = (f' About {v["seeds_to_decide"]} seeds would decide it if the mean and sd held.'
              if v['seeds_to_decide'] else '')
      lines.append(f'- `{v["id"]}` — {v["statement"]} Test: {v["criterion"]}. **{v["verdict"]}**: '
                   f'{v["reason"]}.{more}')
  if plots:
    lines += ['', '## Plots', ''] + [f'![{os.path.splitext(p)[0]}]({p})' for p in plots]
  return '\n'.join(lines) + '\n'


# --- plots ----------------------------------------------------------------------------------------------


def _groups(record: dict) -> dict[str, list[dict]]:
  groups: dict[str, list[dict]] = {}
  for c in record['conditions']:
    if c['runs']:
      groups.setdefault(c['group'] or c['name'], []).append(c)
  return groups


def _band(ax, x, runs: list[list[float]], label: str, **style):
  """Median over seeds as a line, min – max as a band."""
  a = np.array(runs, float)
  line, = ax.plot(x, np.nanmedian(a, 0), label=label, **style)
  if len(runs) > 1:
    ax.fill_between(x, np.nanmin(a, 0), np.nanmax(a, 0), color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(record: dict, path: str) -> str:
  """Training top-1 and the main head's training loss against step, per group (median, min – max)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  groups = _groups(record)
  fig, axes = plt.subplots(2, len(groups), figsize=(4.6 * len(groups), 7), squeeze=False)
  for col, (group, conditions) in enumerate(groups.items()):
    for c in conditions:
      runs = [r['curves'] for r in c['runs'].values()]
      steps = sorted(set.intersection(*(set(r['step']) for r in runs)))
      for row, key in enumerate(('top1', 'loss_main')):
        values = [[dict(zip(r['step'], r[key]))[s] for s in steps] for r in runs]
        if key == 'top1':
          values = [[100 * v for v in vs] for vs in values]
        _band(axes[row, col], steps, values, c['name'])
    axes[0, col].set_title(group)
    axes[0, col].set_ylabel('training top-1 (%, window mean)')
    axes[1, col].set_ylabel("main head's training loss")
    axes[1, col].set_yscale('log')
    axes[1, col].set_xlabel('step')
    axes[0, col].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _gradients(c: dict) -> list[tuple[gradient_flow.Gradients, int]]:
  """A condition's runs' gradient records back as arrays, each with its run's length in steps."""
  return [(gradient_flow.Gradients.from_json(r['gradients']), r['curves']['step'][-1])
          for r in c['runs'].values() if r['gradients']]


def plot_gradients(record: dict, path: str) -> str | None:
  """Per group: the side heads' share of the lower blocks' gradient over training; the main head's
  relative gradient ‖g‖/‖w‖ by depth, early and late; each side head's cosine to the main head by block."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  groups = {g: cs for g, cs in _groups(record).items() if any(_gradients(c) for c in cs)}
  if not groups:
    return None
  early = record['early_fraction']
  fig, axes = plt.subplots(3, len(groups), figsize=(5.2 * len(groups), 12), squeeze=False)
  for col, (group, conditions) in enumerate(groups.items()):
    for c in conditions:
      runs = _gradients(c)
      if not runs:
        continue
      gs = [g for g, _ in runs]
      g0, total = runs[0]
      if g0.aux_heads:
        share = [np.nanmedian(g.aux_share()[g.index(g.lower)], axis=0) for g in gs]
        _band(axes[0, col], g0.steps, share, c['name'])
      trunk = g0.trunk[:-1] if len(g0.trunk) > 1 else g0.trunk
      for name, (lo, hi), style in (('early', (0, early * total), '-'),
                                    ('late', ((1 - early) * total, total + 1), '--')):
        # Geometric means over the window, as the table's main decay averages log ratios (the first
        # measurement's relative gradients can be orders of magnitude above the rest).
        with np.errstate(divide='ignore', invalid='ignore'):
          rel = [10 ** np.nanmean(np.log10(g.relative('main')[g.index(trunk)][:, g.window(lo, hi)]), axis=1)
                 for g in gs]
        axes[1, col].plot(range(len(trunk)), np.nanmedian(np.array(rel), 0), style, marker='.',
                          label=f'{c["name"]} {name}')
        for head, info in g0.aux_heads.items():
          below = info['upstream']
          cos = [np.nanmean(g.cos_to_main(head)[g.index(below)][:, g.window(lo, hi)], axis=1) for g in gs]
          axes[2, col].plot(range(len(below)), np.nanmedian(np.array(cos), 0), style, marker='.',
                            label=f'{c["name"]} {head} {name}')
          lower = below  # the deepest head reaches every block the others do (a prefix)
      axes[1, col].set_xticks(range(len(trunk)), trunk, rotation=90, fontsize=6)
      if g0.aux_heads:
        axes[2, col].set_xticks(range(len(lower)), lower, rotation=90, fontsize=6)
    axes[0, col].set_title(group)
    axes[0, col].set_ylabel('side heads\' share of the lower blocks\' gradient')
    axes[0, col].set_xlabel('step')
    axes[0, col].set_ylim(0, 1)
    axes[1, col].set_yscale('log')
    axes[1, col].set_ylabel("main head's ‖g‖/‖w‖ (geometric mean)")
    axes[2, col].set_ylabel("cosine of a side head's gradient to the main head's")
    axes[2, col].set_xlabel('blocks below the side head (input → output)')
    axes[2, col].axhline(0, color='gray', linewidth=0.5)
    for row in range(3):
      if axes[row, col].lines:
        axes[row, col].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def slim(record: dict) -> dict:
  """The record without the probe's per-block arrays (what a page that cites the study keeps: every run's
  curves, metrics and measures, and the verdicts)."""
  conditions = [{**c, 'runs': {s: {k: v for k, v in run.items() if k != 'gradients'} for s, run in c['runs'].items()}}
                for c in record['conditions']]
  return {**record, 'conditions': conditions}


def publish(record: dict, workdir: str, directory: str) -> list[str]:
  """Copies what a docs page cites into `directory`: `<study>.json` (`slim`) and the plots as
  `<study>_<plot>.png`. Returns the paths written."""
  import shutil
  os.makedirs(directory, exist_ok=True)
  name = record['study']
  written = [os.path.join(directory, f'{name}.json')]
  with open(written[0], 'w') as f:
    json.dump(slim(record), f, indent=1)
  for plot in ('curves.png', 'gradients.png'):
    if os.path.exists(os.path.join(workdir, plot)):
      written.append(os.path.join(directory, f'{name}_{plot}'))
      shutil.copyfile(os.path.join(workdir, plot), written[-1])
  return written


def write(study: runner.Study, workdir: str, machine: str = '') -> dict:
  """Writes `workdir/study.json`, `workdir/report.md` and its plots; returns the record."""
  record = collect(study, workdir, machine)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, RECORD_FILE), 'w') as f:
    json.dump(record, f)
  plots = []
  if any(c['runs'] for c in record['conditions']):
    plots.append(os.path.basename(plot_curves(record, os.path.join(workdir, 'curves.png'))))
    gradients = plot_gradients(record, os.path.join(workdir, 'gradients.png'))
    if gradients:
      plots.append(os.path.basename(gradients))
  with open(os.path.join(workdir, REPORT_FILE), 'w') as f:
    f.write(markdown(record, plots))
  return record
