"""Faults a long run must survive: preemption, being killed at any moment, a corrupt checkpoint, non-finite
values, an unusable workdir, and a dead peer process."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from inception_jax import checkpoint, train
from inception_jax import step as step_lib

from conftest import ROOT, module_command, tiny_config


def cli(data_dir, workdir, *overrides):
  """`python -m experiments.imagenet` on the tiny config, as a user would run it."""
  return module_command('experiments.imagenet', f'--config=tests/tiny_config.py:{data_dir}',
                        f'--workdir={workdir}', *overrides)


def start(command_env):
  command, env = command_env
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def wait_for_line(proc, text, timeout=120):
  """Reads the process' stdout until a line contains `text`; returns the lines read."""
  deadline, lines = time.monotonic() + timeout, []
  while time.monotonic() < deadline:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if text in line:
      return lines
  raise AssertionError(f'no line with {text!r} in time; got {lines[-5:]} / {proc.stderr.read()[-2000:]}')


def final_params(workdir, step):
  return checkpoint.Checkpointer(workdir).manager.restore(step)['params']


def assert_bitwise_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_75_within_seconds(tmp_path, fashion_dir):
  workdir = tmp_path / 'run'
  proc = start(cli(fashion_dir, workdir, '--config.total_steps=100000', '--config.log_every_steps=10'))
  try:
    wait_for_line(proc, 'step      20/')
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
  finally:
    proc.kill()
  assert proc.returncode == 75, err[-2000:]
  assert took < 20
  assert 'on SIGTERM; checkpoint saved' in err.strip().splitlines()[-1]
  saved = checkpoint.Checkpointer(str(workdir)).latest_step()
  assert saved is not None and saved >= 20 and f'stopped at step {saved} ' in err
  # The same command resumes from it.
  command, env = cli(fashion_dir, workdir, f'--config.total_steps={saved + 2}')
  resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resumed from step {saved}' in resumed.stdout


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path, fashion_dir):
  """A process killed at any moment (mid-step, mid-save, mid-cleanup of old checkpoints) and restarted
  with the same command ends with exactly the parameters of a run that was never interrupted."""
  # 30 steps, a checkpoint after each: a few seconds of saving and cleaning up, in which the kill lands.
  steps = ['--config.total_steps=30', '--config.checkpoint_every_steps=1', '--config.keep_checkpoints=2']
  reference = tmp_path / 'reference'
  command, env = cli(fashion_dir, reference, *steps)
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  expected = final_params(str(reference), 30)

  rng = random.Random(0)
  for trial in range(2):
    workdir = tmp_path / f'killed{trial}'
    proc = start(cli(fashion_dir, workdir, *steps))
    try:
      wait_for_line(proc, 'step       1/')
      time.sleep(rng.uniform(0.0, 1.0))
      proc.send_signal(signal.SIGKILL)
      proc.communicate(timeout=60)
    finally:
      proc.kill()
    killed_at = checkpoint.Checkpointer(str(workdir)).latest_step()
    assert killed_at is None or killed_at < 30, 'the kill came too late to test anything'
    command, env = cli(fashion_dir, workdir, *steps)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_bitwise_equal(final_params(str(workdir), 30), expected)


def _corrupt(step_dir, how):
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs)
  assert files
  for path in files:
    if how == 'truncate':
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    else:
      with open(path, 'wb') as f:
        f.write(b'\x00garbage' * 7)


@pytest.mark.slow
@pytest.mark.parametrize('how', ['truncate', 'overwrite'])
def test_corrupt_newest_checkpoint_is_reported_kept_aside_and_the_previous_one_used(tmp_path, fashion_dir,
                                                                                    capsys, how):
  straight, broken = str(tmp_path / 'straight'), str(tmp_path / 'broken')
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=6), straight)
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=4, checkpoint_every_steps=2), broken)
  _corrupt(os.path.join(broken, 'checkpoints', '4'), how)
  capsys.readouterr()

  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=6), broken)
  out = capsys.readouterr().out
  (line,) = [line for line in out.splitlines() if 'unreadable' in line]
  assert line.startswith('checkpoint step 4 is unreadable') and 'corrupt_checkpoints' in line
  assert 'resumed from step 2' in out
  assert os.listdir(os.path.join(broken, 'corrupt_checkpoints', '4'))   # kept, not deleted
  assert_bitwise_equal(final_params(broken, 6), final_params(straight, 6))


def test_resuming_with_another_num_classes_is_an_error_and_keeps_the_checkpoint(tmp_path, fashion_dir,
                                                                               monkeypatch):
  workdir = str(tmp_path / 'run')
  monkeypatch.setattr(train.data, 'check_num_classes', lambda source, n: None)  # as if the data changed
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=2), workdir)
  before = sorted(os.walk(workdir))
  with pytest.raises(ValueError, match=r'does not belong to this run: its params/.* is of shape .*num_classes'):
    train.train_and_evaluate(tiny_config(fashion_dir, total_steps=4, num_classes=12), workdir)
  assert checkpoint.Checkpointer(workdir).latest_step() == 2
  assert not os.path.exists(os.path.join(workdir, 'corrupt_checkpoints'))
  assert sorted(os.walk(workdir))[:1] == before[:1]


def _steps_and_state(**overrides):
  c = tiny_config('', **overrides)
  model = train.build_model(c, 10)
  tx, schedule = train.build_optimizer(c, 10, 10, 8)
  steps = step_lib.JittedSteps(model, tx, schedule, c, mesh=step_lib.data_mesh(jax.devices()[:1]))
  return steps, steps.init(jax.random.key(0))


def _batch(nan_at=None):
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 28, 28, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  if nan_at is not None:
    batch['image'][nan_at] = np.nan
  return batch


def test_a_skipped_step_with_nan_input_changes_nothing_and_names_the_input():
  steps, state = _steps_and_state(skip_nonfinite_steps=True)
  before = jax.device_get(state)
  state, _ = steps.train_step(state, steps.global_batch(_batch(nan_at=(3, 5, 5, 1))), jax.random.key(1))
  after = jax.device_get(state)
  assert int(after.step) == 1
  for field in ('params', 'opt_state', 'batch_stats', 'ema_params'):
    assert_bitwise_equal(getattr(after, field), getattr(before, field))
  assert after.nonfinite.tolist()[:3] == [1, 0, 0]     # one such step, the first (step 0), input first
  with pytest.raises(ValueError, match=r'non-finite input images .*at step 1; the run stopped and saved '
                                       'nothing from that step on: no checkpoint was written.*'
                                       'skip_nonfinite_steps=True'):
    train.check_nonfinite(state, skip=False, last_checkpoint=None)
  assert train.check_nonfinite(state, skip=True, last_checkpoint=None) == 1


def test_a_gradient_overflow_is_counted_and_names_the_first_non_finite_gradient():
  steps, state = _steps_and_state()   # without skipping: the loop stops before anything is written
  state = state.replace(params=jax.tree.map(lambda p: p * 1e30, state.params))   # finite, but x² overflows
  names = step_lib.nonfinite_quantities(state.params)
  state, _ = steps.train_step(state, steps.global_batch(_batch()), jax.random.key(1))
  count, step, what, how_many = jax.device_get(state.nonfinite).tolist()
  assert (count, step) == (1, 0) and names[what] != 'input images'
  with pytest.raises(FloatingPointError, match=rf'non-finite {names[what]}.* at step 1'):
    train.check_nonfinite(state, skip=False, last_checkpoint=7)


@pytest.mark.slow
def test_divergence_stops_the_run_and_leaves_the_last_good_checkpoint(tmp_path, fashion_dir):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=2, checkpoint_every_steps=1), workdir)
  good = final_params(workdir, 2)
  # A learning rate of 1e30 makes the next updates overflow.
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(tiny_config(fashion_dir, total_steps=12, checkpoint_every_steps=1,
                                         log_every_steps=5, learning_rate=1e30), workdir)
  match = re.fullmatch(r'non-finite (loss|gradient of \S+).* at step (\d+); the run stopped and saved nothing '
                       r'from that step on: the newest checkpoint, step (\d+), is from before it\. .*skip_nonfinite_steps=True.*',
                       str(error.value))
  assert match, str(error.value)
  bad_step, last_saved = int(match[2]), int(match[3])
  assert 2 < bad_step <= 5 and last_saved == bad_step - 1   # checkpoints every step up to the bad one
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_step() == last_saved
  for step in ckpt.manager.all_steps():
    saved = ckpt.manager.restore(step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(saved['params']))
  assert_bitwise_equal(ckpt.manager.restore(2)['params'], good)


def test_skip_nonfinite_steps_counts_them_and_goes_on(tmp_path, fashion_dir):
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(tiny_config(fashion_dir, total_steps=6, learning_rate=1e30,
                                                 skip_nonfinite_steps=True), workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [r for r in map(json.loads, f) if 'train/loss' in r]
  assert records[-1]['train/nonfinite_steps'] >= 1
  params = final_params(workdir, 6)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert 0.0 <= results['eval/top1'] <= 1.0


def test_workdir_below_a_file_is_refused_before_any_work(tmp_path, fashion_dir):
  (tmp_path / 'a_file').write_text('keep me')
  with pytest.raises(ValueError, match='is not writable.*give a directory'):
    train.train_and_evaluate(tiny_config(fashion_dir), str(tmp_path / 'a_file' / 'run'))
  assert (tmp_path / 'a_file').read_text() == 'keep me'


def test_a_disk_without_room_for_two_checkpoints_is_refused_before_the_first_step(tmp_path, fashion_dir,
                                                                                  monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(train.shutil, 'disk_usage', lambda path: usage._replace(free=1000))
  with pytest.raises(ValueError, match='MiB free on its disk, but two checkpoints'):
    train.train_and_evaluate(tiny_config(fashion_dir), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints' / '1')


@pytest.mark.slow
def test_when_one_of_two_processes_dies_the_other_exits_with_an_error_in_bounded_time(tmp_path,
                                                                                       fashion_dir):
  from test_scaling import _free_port
  port = _free_port()
  procs = []
  for i in range(2):
    command, env = cli(fashion_dir, tmp_path / 'run', '--config.total_steps=100000',
                       '--config.log_every_steps=10', f'--coordinator_address=localhost:{port}',
                       '--num_processes=2', f'--process_id={i}', '--heartbeat_timeout_s=10')
    env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
    procs.append(start((command, env)))
  try:
    wait_for_line(procs[0], 'step      10/')
    procs[1].kill()
    killed = time.monotonic()
    procs[0].communicate(timeout=120)
    took = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
  assert procs[0].returncode not in (0, None)
  assert took < 60
