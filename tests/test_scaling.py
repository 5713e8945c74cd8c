"""The scaling tool on simulated CPU devices, and a two-process jax.distributed run on localhost."""

import json
import socket
import subprocess

import pytest

from conftest import ROOT, module_command, run_module

TINY = ['--config=v1', '--config.model=lenet', '--config.image_size=32', '--steps=2', '--warmup=1']
KEYS = {'devices', 'images_per_sec', 'step_ms', 'compile_s', 'efficiency', 'global_batch',
        'per_device_batch', 'peak_memory_bytes', 'collective_share', 'loss'}


def _records(workdir):
  with open(workdir / 'scaling.json') as f:
    return json.load(f)


@pytest.mark.slow
def test_weak_scaling_writes_json_table_and_plot(tmp_path):
  result = run_module('experiments.scaling', *TINY, '--devices=1,2,4', '--mode=weak', '--batch=4',
                      f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr[-2000:]
  records = _records(tmp_path)
  assert [r['devices'] for r in records] == [1, 2, 4]
  assert all(KEYS <= set(r) for r in records)
  assert [r['global_batch'] for r in records] == [4, 8, 16]       # weak: the per-device batch stays
  assert all(r['per_device_batch'] == 4 for r in records)
  assert all(r['images_per_sec'] > 0 and r['step_ms'] > 0 and r['compile_s'] > 0 for r in records)
  assert records[0]['efficiency'] == pytest.approx(1.0)
  for r in records[1:]:   # efficiency is images/s per device relative to one device
    assert r['efficiency'] == pytest.approx(r['images_per_sec'] / (r['devices'] * records[0]['images_per_sec']))
  # A single device exchanges nothing; several all-reduce their gradients.
  assert records[0]['collective_share'] == 0
  assert all(r['collective_share'] > 0 for r in records[1:])
  table = (tmp_path / 'scaling.md').read_text()
  assert table.count('\n| ') == 3 + 1 and '| 4 | 16 | 4 |' in table
  assert (tmp_path / 'scaling.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert table.strip() in result.stdout


def test_strong_scaling_keeps_the_global_batch(tmp_path):
  result = run_module('experiments.scaling', *TINY, '--devices=1,2', '--mode=strong', '--batch=8',
                      '--profile=false', '--config.bn_per_device=true', f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr[-2000:]
  records = _records(tmp_path)
  assert [(r['global_batch'], r['per_device_batch']) for r in records] == [(8, 8), (8, 4)]
  assert all(r['bn'] == 'per_device' and r['collective_share'] is None for r in records)


@pytest.mark.parametrize('devices,message', [
    ('16', 'counts must be between 1 and the 8 devices'),
    ('two', 'comma-separated integers'),
])
def test_bad_device_counts_are_one_clear_error(tmp_path, devices, message):
  result = run_module('experiments.scaling', *TINY, f'--devices={devices}', f'--workdir={tmp_path}/w')
  assert result.returncode == 2
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'w').exists()


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
  """Two jax.distributed processes of one CPU device each (gloo collectives over TCP) train the same
  steps as one process with two devices: the losses after the same updates agree."""
  args = [*TINY, '--devices=2', '--batch=4', '--profile=false']
  single = run_module('experiments.scaling', *args, f'--workdir={tmp_path}/single',
                      XLA_FLAGS='--xla_force_host_platform_device_count=2')
  assert single.returncode == 0, single.stderr[-2000:]
  port = _free_port()
  procs = []
  for i in range(2):
    command, env = module_command('experiments.scaling', *args, f'--workdir={tmp_path}/multi',
                                  f'--coordinator_address=localhost:{port}', '--num_processes=2',
                                  f'--process_id={i}', XLA_FLAGS='--xla_force_host_platform_device_count=1')
    procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  try:
    outputs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  one, two = _records(tmp_path / 'single')[0], _records(tmp_path / 'multi')[0]
  assert (one['processes'], two['processes']) == (1, 2)
  assert two['devices'] == one['devices'] == 2 and two['global_batch'] == one['global_batch'] == 8
  assert two['loss'] == pytest.approx(one['loss'], rel=1e-5)
