"""The papers' ablation tables, rerun: each row's preset trained on a chosen dataset and budget.

    python -m experiments.ablations --table=rethinking_table3 --workdir=DIR            # ~30 min on 2 CPU cores
    python -m experiments.ablations --table=xception --workdir=DIR --steps=400
    python -m experiments.ablations --table=googlenet_aux --workdir=DIR --rows=v1,googlenet_no_aux

Each row is `base.short_run` of its preset (the row's optimizer, schedule and architecture switches kept;
`--steps` steps of batch 32 on `--dataset`), a condition of a study (`inception_jax.study`) trained once per
seed (`--seeds`, default one) in `DIR/<row>/seed_<s>/`: a finished run is not run again, an interrupted
one resumes from its checkpoint. The table (`DIR/table.md`, also printed) gives our top-1/top-5 error (the
median over the seeds) and the multiply-adds at the paper's input size beside the paper's ImageNet
numbers; on a small dataset and budget ours are not comparable to those.
"""

from __future__ import annotations

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import dataclasses
import os
import statistics

from absl import flags

from experiments import cli, configs
from experiments.configs import base


@dataclasses.dataclass(frozen=True)
class Row:
  """A table row: its preset, what it changes, and the paper's single-crop errors (%, None: not given)."""
  preset: str
  change: str
  paper_top1_err: float | None = None
  paper_top5_err: float | None = None


TABLES: dict[str, tuple[str, tuple[Row, ...]]] = {
    'rethinking_table3': ('Rethinking the Inception Architecture, Table 3', (
        Row('v2', 'Inception-v2 (SGD)', 23.4),
        Row('v2_rmsprop', '+ RMSProp', 23.1, 6.3),
        Row('v2_label_smoothing', '+ label smoothing', 22.8, 6.1),
        Row('v2_factorized_7x7', '+ factorized 7×7', 21.6, 5.8),
        Row('v3', '+ BN-auxiliary (Inception-v3)', 21.2, 5.6),
    )),
    'xception': ('Xception, Table 1 and §4.6-4.7 (the ablations are curves; no numbers)', (
        Row('xception', 'Xception', 21.0, 5.5),
        Row('xception_no_residual', 'without residual connections'),
        Row('xception_mid_relu', 'ReLU between depthwise and pointwise'),
        Row('xception_mid_elu', 'ELU between depthwise and pointwise'),
    )),
    'googlenet_aux': ('GoogLeNet: the auxiliary classifiers (§5: "about 0.5%")', (
        Row('v1', 'with the two auxiliary heads', None, 10.07),
        Row('googlenet_no_aux', 'without them'),
    )),
}


_TABLE = flags.DEFINE_enum('table', None, sorted(TABLES), 'which table to rerun')
_WORKDIR = flags.DEFINE_string('workdir', None, 'a directory per row, the table in DIR/table.md')
_ROWS = flags.DEFINE_list('rows', None, 'presets of the table to run (default: all)')
_STEPS = flags.DEFINE_integer('steps', 100, 'training steps per row')
_DATASET = flags.DEFINE_string('dataset', 'fashion_mnist', 'the dataset every row trains on')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "the dataset's files (default: where it is installed)")
_SEEDS = flags.DEFINE_string('seeds', '1', 'seeds per row: a count or a list (the table gives the median)')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None,
                                   "default: the smallest input every row's auxiliary heads take")



def g_macs(config) -> float:
  """Multiply-adds (G) of the row's model at the paper's input size, eval mode."""
  from inception_jax import models, summary
  overrides = {k: v for k, v in config.model_overrides.to_dict().items() if v is not None}
  model = models.create_model(config.model, aux_logits=False, **overrides)
  size = models.model_info(config.model).input_size
  return summary.summarize(model, (1, size, size, 3)).macs / 1e9


def rows_study(name: str, rows: tuple[Row, ...], steps: int, dataset: str, data_dir: str, image_size: int,
               seeds: tuple[int, ...]):
  """The table as a study: a condition per row (its preset as `base.short_run`), no claims."""
  from inception_jax import study
  conditions = []
  for row in rows:
    config = base.short_run(configs.preset(row.preset), steps, dataset, image_size)
    config.data_dir = data_dir
    conditions.append(study.Condition(row.preset, config, row.change))
  return study.Study(name, TABLES[name][0], tuple(conditions), seeds)


def _pct(x: float | None) -> str:
  return '–' if x is None else f'{x:g}'


def table(name: str, results: dict[str, list[dict]], macs: dict[str, float], steps: int, dataset: str,
          image_size: int) -> str:
  """Our errors (the median over seeds, and the range when there are several) beside the paper's."""
  title, rows = TABLES[name]
  seeds = len(next(iter(results.values())))
  runs = 'one run each' if seeds == 1 else f'the median over {seeds} seeds [min – max]'
  lines = [
      f'### {title}', '',
      f'Ours: {steps} steps of batch 32 on {dataset} at {image_size} px, {runs}. These small-data numbers '
      'are not the paper\'s ImageNet numbers and are not comparable to them; only the differences between '
      'rows under the same budget say something, and a short run is noisy.', '',
      '| row | change | top-1 err % | top-5 err % | G mult-adds | paper top-1 err % | paper top-5 err % |',
      '|---|---|---|---|---|---|---|']

  def error(runs_, key):
    errors = sorted(100 * (1 - r[key]) for r in runs_)
    median = statistics.median(errors)
    return f'{median:.1f}' if len(errors) == 1 else f'{median:.1f} [{errors[0]:.1f} – {errors[-1]:.1f}]'

  for row in rows:
    if row.preset not in results:
      continue
    r = results[row.preset]
    lines.append(f'| `{row.preset}` | {row.change} | {error(r, "eval/top1")} | {error(r, "eval/top5")} | '
                 f'{macs[row.preset]:.2f} | {_pct(row.paper_top1_err)} | {_pct(row.paper_top5_err)} |')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected argument {argv[1]!r}; the settings are flags (see --help)')
  if not _TABLE.value or not _WORKDIR.value:
    cli.fail(f'--table and --workdir are required; the tables: {", ".join(sorted(TABLES))}')
  rows = TABLES[_TABLE.value][1]
  if _ROWS.value:
    unknown = [w for w in _ROWS.value if w not in {r.preset for r in rows}]
    if unknown:
      cli.fail(f'--rows: {unknown[0]!r} is not a row of {_TABLE.value}; its rows: '
               f'{", ".join(r.preset for r in rows)}')
    rows = tuple(r for r in rows if r.preset in _ROWS.value)
  if _STEPS.value < 1:
    cli.fail(f'--steps must be positive, got {_STEPS.value}')
  from inception_jax import study
  try:
    seeds = tuple(study.parse_seeds(_SEEDS.value))
  except ValueError as e:
    cli.fail(e)
  cli.enable_compilation_cache()
  # One input size for the whole table: the largest any row's auxiliary heads need.
  image_size = _IMAGE_SIZE.value or max(base.short_run(configs.preset(r.preset), 1).image_size for r in rows)
  with cli.training_errors():
    table_study = rows_study(_TABLE.value, rows, _STEPS.value, _DATASET.value, _DATA_DIR.value, image_size,
                             seeds)
    finished = study.run(table_study, _WORKDIR.value)
    results = {c.name: [finished[(c.name, s)] for s in seeds] for c in table_study.conditions}
    macs = {c.name: g_macs(c.config) for c in table_study.conditions}
  text = table(_TABLE.value, results, macs, _STEPS.value, _DATASET.value, image_size)
  with open(os.path.join(_WORKDIR.value, 'table.md'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)


if __name__ == '__main__':
  cli.run(main)
