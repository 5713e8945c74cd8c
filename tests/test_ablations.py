"""The ablation sweep: rows trained one after another under one budget, a finished row never rerun."""

import json

import pytest

from conftest import ONE_DEVICE, run_module


@pytest.mark.slow
def test_two_rows_end_to_end_and_resumable(tmp_path, fashion_dir):
  workdir = tmp_path / 'sweep'
  args = ('--table=googlenet_aux', f'--workdir={workdir}', '--steps=2', f'--data_dir={fashion_dir}')
  result = run_module('experiments.ablations', *args, **ONE_DEVICE)
  assert result.returncode == 0, result.stderr[-3000:]
  table = (workdir / 'table.md').read_text()
  assert table in result.stdout
  assert 'not the paper\'s ImageNet numbers' in table
  lines = [line for line in table.splitlines() if line.startswith('| `')]
  assert [line.split('|')[1].strip() for line in lines] == ['`v1`', '`googlenet_no_aux`']
  for row, line in zip(('v1', 'googlenet_no_aux'), lines):
    run = workdir / row / 'seed_0'
    saved = json.loads((run / 'result.json').read_text())
    assert saved['eval/count'] == 13
    assert json.loads((run / 'config.json').read_text())['image_size'] == 65  # v1's aux heads: both rows
    assert f'| {100 * (1 - saved["eval/top1"]):.1f} |' in line
    assert '| 1.58 |' in line   # GoogLeNet's multiply-adds at 224 px (README's model table)

  again = run_module('experiments.ablations', *args, **ONE_DEVICE)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('finished before') == 2 and 'step ' not in again.stdout
  assert (workdir / 'table.md').read_text() == table


def test_unknown_row_is_one_clear_error(tmp_path):
  result = run_module('experiments.ablations', '--table=xception', f'--workdir={tmp_path}', '--rows=v3')
  assert result.returncode == 2
  assert "'v3' is not a row of xception; its rows: xception, xception_no_residual" in result.stderr
