"""A result over seeds (`python -m experiments.seeds`): one run per seed, resumable, reported as median,
spread and mean ± sd."""

import json
import os

import pytest

from conftest import ONE_DEVICE, ROOT, run_module
from inception_jax import study


@pytest.mark.parametrize('value,expected', [('3', [0, 1, 2]), ('1', [0]), ('0,5,7', [0, 5, 7]), ('4,', None),
                                            ('0', None), ('three', None), ('1,1', None), ('', None)])
def test_seeds_are_a_count_or_a_list(value, expected):
  if expected is None:
    with pytest.raises(ValueError, match='seeds must be a count'):
      study.parse_seeds(value)
  else:
    assert study.parse_seeds(value) == expected


def test_summary_gives_median_spread_mean_and_sample_sd():
  results = [{'seed': 0, 'eval/top1': 0.80, 'wall_s': 10.0, 'note': 'x'},
             {'seed': 1, 'eval/top1': 0.86, 'wall_s': 14.0},
             {'seed': 2, 'eval/top1': 0.83, 'wall_s': 12.0}]
  summary = study.summarize(results)
  assert set(summary) == {'eval/top1', 'wall_s'}   # numbers every run has; not the seed
  top1 = summary['eval/top1']
  assert top1['median'] == pytest.approx(0.83) and top1['mean'] == pytest.approx(0.83)
  assert top1['sd'] == pytest.approx(0.03)          # sqrt((0.03² + 0.03² + 0) / 2)
  assert (top1['min'], top1['max']) == (0.80, 0.86) and top1['spread'] == pytest.approx(0.06)
  assert top1['values'] == [0.80, 0.86, 0.83]
  assert study.summarize(results[:1])['eval/top1']['sd'] == 0.0
  row = study.table(summary, [0, 1, 2]).splitlines()[2]
  assert row.startswith('| eval/top1 (%) | 83.00 | 83.00 ± 3.00 | 80.00 | 86.00 | 6.00 | 80.00 / 86.00 / 83.00 |')


def _seeds_cli(fashion_dir, workdir, *args):
  return run_module('experiments.seeds', f'--config=tests/tiny_config.py:{fashion_dir}', f'--workdir={workdir}',
                    *args, cwd=ROOT, **ONE_DEVICE)


@pytest.mark.slow
def test_a_preset_over_seeds_runs_each_once_and_resumes(tmp_path, fashion_dir):
  workdir = tmp_path / 'w'
  first = _seeds_cli(fashion_dir, workdir, '--seeds=2', '--config.total_steps=3')
  assert first.returncode == 0, first.stderr[-2000:]
  record = json.loads(first.stdout.strip().splitlines()[-1])
  assert record['seeds'] == [0, 1]
  loss = record['summary']['eval/loss']
  assert loss['n'] == 2 and loss['values'][0] != loss['values'][1]   # the seed changed the run
  assert record['summary']['eval/count']['values'] == [13.0, 13.0]   # every test image, each time
  for seed in (0, 1):
    result = json.load(open(workdir / f'seed_{seed}' / 'result.json'))
    assert result['seed'] == seed and result['wall_s'] > 0
    assert json.load(open(workdir / f'seed_{seed}' / 'config.json'))['seed'] == seed
  assert json.load(open(workdir / 'seeds.json')) == record
  assert '| eval/top1 (%) |' in open(workdir / 'seeds.md').read()
  assert 'GFLOP/s' in record['machine'] and record['machine'] in open(workdir / 'seeds.md').read()

  # Again, with a third seed and the second one's result lost (interrupted after its last checkpoint).
  os.remove(workdir / 'seed_1' / 'result.json')
  again = _seeds_cli(fashion_dir, workdir, '--seeds=3', '--config.total_steps=3')
  assert again.returncode == 0, again.stderr[-2000:]
  assert again.stdout.count('finished before') == 1
  assert 'resumed from step 3' in again.stdout
  record = json.loads(again.stdout.strip().splitlines()[-1])
  assert record['summary']['eval/loss']['values'][:2] == loss['values']
  assert record['summary']['eval/loss']['n'] == 3


def test_bad_seeds_are_one_error_line(tmp_path, fashion_dir):
  result = _seeds_cli(fashion_dir, tmp_path / 'w', '--seeds=three')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: seeds must be a count (e.g. 3 for seeds 0, 1, 2) or a comma-separated list of distinct integers "
      "(e.g. 0,5,7), got 'three'"]
