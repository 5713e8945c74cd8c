"""scripts/accelerator_check.sh, run as --dry_run on the CPU: the same sequence of runs as on a GPU or TPU
host, each printing one JSON line a reader can use."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, module_command


@pytest.mark.slow
def test_the_dry_run_prints_every_check_as_one_json_line(tmp_path):
  _, env = module_command('experiments.benchmark')
  env = dict(env, PYTHON=sys.executable, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'))
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--dry_run'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r['check'] for r in records] == ['train_bf16'] * 2 + ['train_bf16_lax'] * 2 + ['max_batch'] * 2 + [
      'synthetic_loop']
  assert not [r for r in records if 'error' in r], records
  for r in records[:4]:
    assert r['dtype'] == 'bfloat16' and r['train_images_per_sec'] > 0 and 0 < r['mfu'] < 1
  assert [r['batch'] for r in records[:4]] == [8, 16, 8, 16]
  assert [r['kernels'] for r in records[:4]] == ['cpu', 'cpu', 'lax', 'lax']   # auto is cpu here
  assert [r['remat'] for r in records[4:6]] == ['', 'dots'] and all(r['max_batch'] >= 8 for r in records[4:6])
  loop = records[6]
  assert loop['steps'] == 4 and loop['train_images_per_sec'] > 0 and 0 <= loop['input_wait'] <= 1


def test_an_unknown_argument_is_one_error_line():
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--fast'], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip() == "error: unknown argument '--fast'; valid: --dry_run, gpu, tpu"
  assert not os.path.exists(os.path.join(ROOT, '--fast'))
