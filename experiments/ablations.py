"""The papers' ablation tables, rerun: each row's preset trained on a chosen dataset and budget.

    python -m experiments.ablations --table=rethinking_table3 --workdir=DIR            # ~30 min on 2 CPU cores
    python -m experiments.ablations --table=xception --workdir=DIR --steps=400
    python -m experiments.ablations --table=googlenet_aux --workdir=DIR --rows=v1,googlenet_no_aux

Each row is `base.short_run` of its preset (the row's optimizer, schedule and architecture switches kept;
`--steps` steps of batch 32 on `--dataset`), trained in `DIR/<row>/`. A finished row (its
`DIR/<row>/result.json`) is not run again, and an interrupted one resumes from its checkpoint. The table
(`DIR/table.md`, also printed) gives our top-1/top-5 error and the multiply-adds at the paper's input size
beside the paper's ImageNet numbers; on a small dataset and budget ours are not comparable to those.
"""

from __future__ import annotations

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import dataclasses
import importlib
import json
import os

from absl import flags

from experiments import cli


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
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None,
                                   "default: the smallest input every row's auxiliary heads take")



def preset(name: str):
  return importlib.import_module(f'experiments.configs.{name}').get_config()


def g_macs(config) -> float:
  """Multiply-adds (G) of the row's model at the paper's input size, eval mode."""
  from inception_jax import models, summary
  overrides = {k: v for k, v in config.model_overrides.to_dict().items() if v is not None}
  model = models.create_model(config.model, aux_logits=False, **overrides)
  size = models.model_info(config.model).input_size
  return summary.summarize(model, (1, size, size, 3)).macs / 1e9


def run_row(row: Row, workdir: str, steps: int, dataset: str, data_dir: str, image_size: int) -> dict:
  """Trains one row (or reads its finished result)."""
  from experiments.configs import base
  from inception_jax import train
  workdir = os.path.join(workdir, row.preset)
  result_path = os.path.join(workdir, 'result.json')
  if os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    print(f'--- {row.preset}: finished before, top-1 {result["eval/top1"]:.2%}', flush=True)
    return result
  print(f'--- {row.preset}: {row.change}', flush=True)
  config = base.short_run(preset(row.preset), steps, dataset, image_size)
  config.data_dir = data_dir
  result = train.train_and_evaluate(config, workdir)
  result = {**result, 'g_macs': g_macs(config), 'image_size': config.image_size, 'steps': steps}
  with open(result_path + '.tmp', 'w') as f:
    json.dump(result, f)
  os.replace(result_path + '.tmp', result_path)  # a row counts as finished only once this is whole
  return result


def _pct(x: float | None) -> str:
  return '–' if x is None else f'{x:g}'


def table(name: str, results: dict[str, dict], steps: int, dataset: str) -> str:
  title, rows = TABLES[name]
  sizes = sorted({r['image_size'] for r in results.values()})
  lines = [
      f'### {title}', '',
      f'Ours: {steps} steps of batch 32 on {dataset} at {"/".join(map(str, sizes))} px, one run each. '
      'These small-data numbers are not the paper\'s ImageNet numbers and are not comparable to them; '
      'only the differences between rows under the same budget say something, and a single short run is '
      'noisy.', '',
      '| row | change | top-1 err % | top-5 err % | G mult-adds | paper top-1 err % | paper top-5 err % |',
      '|---|---|---|---|---|---|---|']
  for row in rows:
    if row.preset not in results:
      continue
    r = results[row.preset]
    lines.append(f'| `{row.preset}` | {row.change} | {100 * (1 - r["eval/top1"]):.1f} | '
                 f'{100 * (1 - r["eval/top5"]):.1f} | {r["g_macs"]:.2f} | {_pct(row.paper_top1_err)} | '
                 f'{_pct(row.paper_top5_err)} |')
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
  cli.enable_compilation_cache()
  from experiments.configs import base
  # One input size for the whole table: the largest any row's auxiliary heads need.
  image_size = _IMAGE_SIZE.value or max(base.short_run(preset(r.preset), 1).image_size for r in rows)
  try:
    results = {row.preset: run_row(row, _WORKDIR.value, _STEPS.value, _DATASET.value, _DATA_DIR.value,
                                   image_size) for row in rows}
  except (ValueError, FloatingPointError) as e:
    cli.fail(e)
  text = table(_TABLE.value, results, _STEPS.value, _DATASET.value)
  with open(os.path.join(_WORKDIR.value, 'table.md'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)


if __name__ == '__main__':
  cli.run(main)
