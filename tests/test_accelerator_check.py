"""scripts/accelerator_check.sh, run as --dry_run on the CPU: the same sequence of runs as on a GPU or TPU
host, each printing one JSON line a reader can use, on a host without TensorFlow (as accelerator images
with JAX alone are)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ONE_DEVICE, ROOT, module_command


def without_tensorflow(tmp_path, env):
  """`env` for a Python in which TensorFlow, tensorflow-datasets and clu cannot be imported."""
  blocker = tmp_path / 'no_tensorflow'
  blocker.mkdir()
  (blocker / 'sitecustomize.py').write_text(
      "import sys\nfor name in ('tensorflow', 'tensorflow_datasets', 'clu'):\n  sys.modules[name] = None\n")
  return dict(env, PYTHONPATH=os.pathsep.join([str(blocker), ROOT, env.get('PYTHONPATH', '')]))


@pytest.mark.slow
def test_the_dry_run_prints_every_check_as_one_json_line_without_tensorflow(tmp_path):
  _, env = module_command('experiments.benchmark', **ONE_DEVICE)
  env = dict(without_tensorflow(tmp_path, env), PYTHON=sys.executable,
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'))
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--dry_run'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r['check'] for r in records] == ['train_bf16'] * 2 + ['train_bf16_lax'] * 2 + [
      'peer_torchvision', 'synthetic_loop'] + ['max_batch'] * 2, result.stdout
  assert not [r for r in records if 'error' in r], records
  peer = records.pop(4)   # the same step in PyTorch, at the larger batch, under AMP
  assert (peer['peer'], peer['model'], peer['batch'], peer['dtype']) == ('torchvision', 'googlenet', 16, 'bfloat16')
  assert peer['train_images_per_sec'] > 0
  for r in records:   # what a reader needs of every run
    assert r['model'] == 'lenet' and r['dtype'] == 'bfloat16' and r['remat'] in ('', 'dots'), r
    assert r['kernels'] in ('cpu', 'lax') and r['batch' if 'batch' in r else 'max_batch'] >= 8, r
  for r in records[:5]:
    assert r['train_images_per_sec'] > 0 and 0 < r['mfu'] < 1, r
  assert [r['batch'] for r in records[:5]] == [8, 16, 8, 16, 8]
  assert [r['kernels'] for r in records[:5]] == ['cpu', 'cpu', 'lax', 'lax', 'cpu']   # auto is cpu here
  # The larger batch's run is profiled: where its step goes, by kind of work and by kernel.
  breakdown = records[1]['breakdown']
  assert breakdown['step_ms'] > 0 and 0 <= breakdown['idle_ms'] < breakdown['step_ms']
  assert breakdown['work'] and all(ms > 0 for ms in breakdown['work'].values())
  assert 0 < len(breakdown['top_kernels']) <= 15 and 'breakdown' not in records[0]
  loop = records[4]
  assert loop['steps'] == 4 and loop['size'] == 28 and 0 <= loop['input_wait'] <= 1
  assert [r['remat'] for r in records[5:]] == ['', 'dots'] and all(r['max_batch'] >= 16 for r in records[5:])


@pytest.mark.slow
def test_the_levers_dry_run_prints_a_row_per_lever_against_its_baseline(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'), **ONE_DEVICE)
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--dry_run', '--levers'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  levers = ['lever_baseline', 'lever_kernels_gpu', 'lever_no_command_buffer', 'lever_no_autotuning',
            'lever_batch_2x', 'lever_batch_2x_remat', 'lever_batch_1.5x', 'lever_no_donation']
  assert [r['check'] for r in records] == levers + ['levers_vs_baseline'], result.stdout
  assert not [r for r in records if 'error' in r], records
  by = {r['check']: r for r in records}
  assert [by[c]['batch'] for c in levers] == [16, 16, 16, 16, 32, 32, 24, 16]
  assert by['lever_kernels_gpu']['kernels'] == 'gpu' and by['lever_baseline']['kernels'] == 'cpu'
  assert '--xla_gpu_enable_command_buffer=' in by['lever_no_command_buffer']['xla_flags']
  assert by['lever_batch_2x_remat']['remat'] == 'dots' and by['lever_no_donation']['donate'] is False
  summary = by['levers_vs_baseline']
  for c in levers[1:]:
    assert summary[c] == pytest.approx(by[c]['train_images_per_sec'] / by['lever_baseline']['train_images_per_sec'])


def test_a_spent_budget_skips_the_runs_with_one_error_line_each():
  env = dict(os.environ, PYTHON=sys.executable, ACCELERATOR_CHECK_BUDGET_S='0')
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--dry_run'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert len(records) == 8 and all(r['error'] == 'skipped: the 0 s budget is spent' for r in records), records
  assert records[0]['command'].endswith('--batch=8') and records[-1]['command'].endswith('--remat=dots '
                                                                                           '--memory_gb=0.006 --json')


def test_an_unknown_argument_is_one_error_line():
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--fast'], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: unknown argument '--fast'; valid: --dry_run, --installed, --levers, gpu, "
                                   'tpu')
  assert not os.path.exists(os.path.join(ROOT, '--fast'))


def test_installed_refuses_a_python_whose_jax_sees_no_accelerator():
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS='cpu')
  result = subprocess.run(['bash', 'scripts/accelerator_check.sh', '--installed'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and result.stdout == '', result
  assert result.stderr.strip() == (f"error: {sys.executable}'s jax finds no GPU or TPU (backend: cpu); "
                                   '--installed needs the accelerator\'s jax')
