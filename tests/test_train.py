"""The training system: durations, the sharded step, the loop's outputs, resuming, config errors."""

import functools
import json
import time
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from inception_jax import checkpoint, data, models, train
from inception_jax import step as step_lib
from inception_jax.data import sources

from conftest import ONE_DEVICE, ROOT, run_module, tiny_config, write_idx
from tiny_config import TinyInception



def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_durations_are_given_once_as_steps_or_epochs():
  c = ml_collections.ConfigDict({'total_steps': None, 'total_epochs': 2.5})
  assert train.duration_steps('total', c, steps_per_epoch=10) == 25
  c.total_steps = 7
  with pytest.raises(ValueError, match='only one of total_steps and total_epochs'):
    train.duration_steps('total', c, 10)
  c.total_epochs = None
  assert train.duration_steps('total', c, 10) == 7
  assert train.duration_steps('warmup', ml_collections.ConfigDict(), 10, default=0) == 0


def test_a_run_writes_metrics_config_events_and_checkpoints(tmp_path, fashion_dir):
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(tiny_config(fashion_dir), workdir)
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_records = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train_records] == [1, 2, 3, 4]
  assert all(np.isfinite(r['train/loss']) for r in train_records)
  (final,) = [r for r in records if 'eval/top1' in r]
  assert final['step'] == 4 and final['eval/count'] == 13  # every test image exactly once
  for key in ('eval/top1', 'eval/top5', 'eval_ema/top1'):
    assert 0.0 <= final[key] <= 1.0
  assert results['eval/top1'] == final['eval/top1']
  assert json.load(open(os.path.join(workdir, 'config.json')))['model'] == 'lenet'
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  assert checkpoint.Checkpointer(workdir).latest_step() == 4
  # The share of each logging window spent waiting for input.
  assert all(0.0 <= r['train/input_wait'] <= 1.0 for r in train_records)


def test_logged_train_metrics_are_means_over_the_logging_window(tmp_path, fashion_dir):
  logged = {}
  for every in (1, 2):
    workdir = str(tmp_path / f'every_{every}')
    train.train_and_evaluate(tiny_config(fashion_dir, log_every_steps=every, schedule='cosine'), workdir)
    logged[every] = {r['step']: r for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if 'train/loss' in r}
  assert sorted(logged[2]) == [2, 4]
  for step in (2, 4):
    for key in ('train/loss', 'train/top1', 'train/l2_grads'):
      mean = (logged[1][step - 1][key] + logged[1][step][key]) / 2
      assert logged[2][step][key] == pytest.approx(mean, rel=1e-6), key
    # The two steps differ, so a mean is not a last value; the learning rate is the step's own.
    assert logged[1][step - 1]['train/loss'] != logged[1][step]['train/loss']
    assert logged[2][step]['train/learning_rate'] == logged[1][step]['train/learning_rate']


def test_images_per_second_is_the_logging_windows_own(tmp_path, fashion_dir):
  """A pause before step 3 shows in step 3's window alone: step 4's rate is not dragged down by it, nor by
  the compilation in the first window (a rate since the start of the run would be)."""
  pause = 0.6

  def make_probe(model, spec):
    return lambda step, state, batch: time.sleep(pause) if step == 2 else None

  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(fashion_dir, log_every_steps=1), workdir, make_probe)
  rate = {r['step']: r['train/images_per_sec'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if 'train/loss' in r}
  paused = 8 / pause   # batch 8
  assert rate[3] < paused < rate[4]
  assert rate[1] < rate[4]   # the first window compiles the step


def test_the_callers_config_is_left_as_it_was(tmp_path, fashion_dir):
  config = tiny_config(fashion_dir, image_size=0)   # 0: the model's size, resolved by the run
  before = config.to_dict()
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert config.to_dict() == before
  assert json.load(open(tmp_path / 'run' / 'config.json'))['image_size'] == 28   # LeNet's


def test_on_the_cpu_backend_a_runs_input_pipelines_are_not_autotuned(tmp_path, fashion_dir, monkeypatch):
  """input_autotune 'auto' (the default): on the CPU tuning bought the step nothing, and its thread has
  held up the end of runs (docs/performance.md)."""
  asked = []
  for name in ('train_batches', 'eval_batches'):
    def record(*args, real=getattr(data, name), name=name, **kwargs):
      asked.append((name, kwargs['autotune']))
      return real(*args, **kwargs)
    monkeypatch.setattr(data, name, record)
  monkeypatch.setattr(train, 'build_model', lambda config, num_classes: TinyInception(num_classes=num_classes))
  train.train_and_evaluate(tiny_config(fashion_dir, precise_bn_batches=1, eval_train=True), str(tmp_path / 'run'))
  # The training stream, precise BN's stream, the evaluation of the test and of the training images.
  assert sorted(asked) == [('eval_batches', False)] * 2 + [('train_batches', False)] * 2


def test_synthetic_data_trains_on_device_batches_without_an_input_pipeline(tmp_path, monkeypatch):
  from inception_jax import data
  monkeypatch.setattr(data, 'create_source', lambda *a, **k: pytest.fail('synthetic data read a source'))
  monkeypatch.setattr(data, 'train_batches', lambda *a, **k: pytest.fail('synthetic data ran tf.data'))
  # An epoch is ImageNet's training split: 16 / 1,281,167 of one is two steps of 8.
  config = tiny_config('', dataset='synthetic', total_steps=None, total_epochs=16 / data.SYNTHETIC_EPOCH)
  workdir = tmp_path / 'run'
  assert train.train_and_evaluate(config, str(workdir)) == {}   # no evaluation of random images
  records = read_jsonl(str(workdir / 'metrics.jsonl'))
  assert [r['step'] for r in records] == [1, 2] and all(np.isfinite(r['train/loss']) for r in records)
  assert all('eval/top1' not in r for r in records)
  weights = checkpoint.read_weights(str(workdir))
  assert weights['params']['fc']['kernel'].shape[-1] == data.SYNTHETIC_CLASSES


def test_a_preset_trains_on_synthetic_data_from_the_command_line(tmp_path):
  # A preset's epoch-based schedule resolves on the synthetic epoch; LeNet (with GoogLeNet's preset, whose
  # model options it takes) keeps the compile short.
  result = _cli('--config=v1', '--config.dataset=synthetic', '--config.total_steps=2', '--config.model=lenet',
                '--config.image_size=28', '--config.batch_size=8', '--config.log_every_steps=1',
                f'--workdir={tmp_path}/w', JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'no evaluation of synthetic data' in result.stdout
  records = read_jsonl(str(tmp_path / 'w' / 'metrics.jsonl'))
  assert [r['step'] for r in records] == [1, 2] and all(0 <= r['train/input_wait'] <= 1 for r in records)


@pytest.fixture
def learnable_dir(tmp_path):
  """Fashion-MNIST-format files where class k is a bright square in the k-th quadrant, plus noise."""
  rng = np.random.default_rng(0)
  d = tmp_path / 'learnable'
  d.mkdir()
  for split, n in (('train', 64), ('eval', 16)):
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, (n, 28, 28))
    for img, k in zip(images, labels):
      img[(k // 2) * 14:(k // 2) * 14 + 14, (k % 2) * 14:(k % 2) * 14 + 14] += 180
    images_file, labels_file = sources.FASHION_MNIST_FILES[split]
    write_idx(d / images_file, images)
    write_idx(d / labels_file, labels)
  return str(d)


@pytest.mark.slow
def test_loss_decreases_over_twenty_steps(tmp_path, learnable_dir):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(learnable_dir, total_steps=20, learning_rate=3e-3), workdir)
  losses = [r['train/loss'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if 'train/loss' in r]
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, fashion_dir):
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=6), straight)
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=3, checkpoint_every_steps=3), split)
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=6), split)  # resumes at step 3

  def final_params(workdir):
    return checkpoint.Checkpointer(workdir).manager.restore(6)['params']

  a, b = final_params(straight), final_params(split)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_the_next_seed_in_the_same_process_reuses_the_steps_and_trains_as_a_fresh_run(tmp_path, fashion_dir):
  def run(name, **overrides):
    results = train.train_and_evaluate(tiny_config(fashion_dir, **overrides), str(tmp_path / name))
    (steps,) = train._last_steps.values()
    params = checkpoint.Checkpointer(str(tmp_path / name)).manager.restore(4)['params']
    return results, steps, params

  _, first, _ = run('seed0', seed=0)
  reused, steps, params = run('seed1', seed=1)
  assert steps is first   # the seed alone differs: nothing traced or compiled again
  train._last_steps.clear()
  fresh, steps, fresh_params = run('seed1_fresh', seed=1)
  assert steps is not first and reused == fresh
  jax.tree.map(np.testing.assert_array_equal, params, fresh_params)
  # Any other difference is a step of its own.
  _, other, _ = run('other_lr', seed=1, learning_rate=2e-3)
  assert other is not steps


def _one_step(devices, bn_per_device=False, dtype='float32'):
  """One training step of a small Inception network (BN in every conv) on a fixed global batch of 16, on
  a mesh of `devices`."""
  c = tiny_config('', image_size=32, batch_size=16, bn_per_device=bn_per_device, optimizer='sgd',
                  learning_rate=0.01, label_smoothing=0.1, weight_decay=4e-5, dtype=dtype)
  model = TinyInception(num_classes=10, dtype=jnp.bfloat16 if dtype == 'bfloat16' else None)
  tx, schedule = train.build_optimizer(c, 10, 10, 16)
  steps = step_lib.JittedSteps(model, tx, schedule, c, mesh=step_lib.data_mesh(devices))
  state = steps.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  state, metrics = steps.train_step(state, steps.global_batch(batch), jax.random.key(1))
  return jax.device_get(state), jax.device_get(metrics)


def test_the_pipelines_uint8_pixels_are_normalised_inside_the_steps():
  # The input pipelines hand over uint8 pixels; the steps normalise them with the ImageSpec, as if they had
  # been given the float images ((x / 255 - mean) / std).
  c = tiny_config('', image_size=8, batch_size=8)
  model = TinyInception(num_classes=10)
  tx, schedule = train.build_optimizer(c, 10, 10, 8)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  pixels = (np.arange(8 * 8 * 8 * 3) % 256).reshape(8, 8, 8, 3).astype(np.uint8)   # every value
  floats = ((pixels / 255 - np.array(mean)) / np.array(std)).astype(np.float32)
  label = np.arange(8, dtype=np.int32)
  spec = data.ImageSpec(8, mean, std)
  steps = step_lib.JittedSteps(model, tx, schedule, c, spec=spec)
  state = steps.init(jax.random.key(0))
  rng = jax.random.key(1)
  as_pixels = steps.global_batch({'image': pixels, 'label': label})
  as_floats = steps.global_batch({'image': floats, 'label': label})
  np.testing.assert_allclose(step_lib.model_batch(as_pixels, spec)['image'], floats, atol=1e-6)
  mask = {'mask': steps.global_batch({'image': pixels, 'mask': np.ones(8, bool)})['mask']}
  evals = [steps.eval_step(state.params, state.batch_stats, {**b, **mask}) for b in (as_pixels, as_floats)]
  np.testing.assert_allclose(evals[0]['loss'], evals[1]['loss'], rtol=1e-5)
  (_, m_pixels), (_, m_floats) = (steps.train_step(jax.tree.map(jnp.copy, state), b, rng)
                                  for b in (as_pixels, as_floats))
  for key in ('loss', 'l2_grads'):
    np.testing.assert_allclose(m_pixels[key], m_floats[key], rtol=1e-5)
  with pytest.raises(ValueError, match='uint8 images need their normalisation'):
    step_lib.JittedSteps(model, tx, schedule, c).train_step(state, as_pixels, rng)


def test_without_weight_norms_a_step_trains_the_same_and_logs_the_rest():
  # With log_weight_norms the step also reports the global norms of the weights it leaves and of the update
  # it applied; without, the weights, statistics and optimizer state it leaves are the same to the bit.
  model = TinyInception(num_classes=10)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(8, 16, 16, 3)).astype(np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  results = {}
  for norms in (True, False):
    c = tiny_config('', image_size=16, batch_size=8, clip_norm=1.0, learning_rate=0.01, log_weight_norms=norms)
    tx, schedule = train.build_optimizer(c, 10, 10, 8)
    steps = step_lib.JittedSteps(model, tx, schedule, c)
    before = steps.init(jax.random.key(0))
    kept = jax.device_get(before.params)   # the step donates its state
    after, metrics = steps.train_step(before, steps.global_batch(batch), jax.random.key(1))
    results[norms] = kept, jax.device_get(after), jax.device_get(metrics)
  (kept, on, with_norms), (_, off, without) = results[True], results[False]
  assert set(with_norms) - set(without) == {'l2_params', 'l2_updates'}
  assert set(without) <= set(with_norms) and 'l2_grads' in without
  for key in without:
    np.testing.assert_array_equal(with_norms[key], without[key])
  for tree in ('params', 'batch_stats', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(on, tree), getattr(off, tree))
  norm = lambda tree: np.sqrt(sum(np.sum(np.square(np.float64(x))) for x in jax.tree.leaves(tree)))
  np.testing.assert_allclose(with_norms['l2_params'], norm(on.params), rtol=1e-5)
  moved = jax.tree.map(lambda new, old: np.float64(new) - np.float64(old), on.params, kept)
  np.testing.assert_allclose(with_norms['l2_updates'], norm(moved), rtol=1e-3)
  assert float(with_norms['l2_updates']) > 0


def test_precise_bn_statistics_are_what_a_training_step_moves_the_running_averages_towards():
  c = tiny_config('', image_size=16, batch_size=8, optimizer='sgd', learning_rate=0.1)
  model = TinyInception(num_classes=10, bn_momentum=0.9)
  tx, schedule = train.build_optimizer(c, 10, 10, 8)
  steps = step_lib.JittedSteps(model, tx, schedule, c)
  state = steps.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  local = [{'image': rng.normal(1.0, 2.0, size=(8, 16, 16, 3)).astype(np.float32),
            'label': rng.integers(0, 10, 8).astype(np.int32)} for _ in range(2)]
  batches = [steps.global_batch(b) for b in local]
  key = jax.random.key(1)
  of_batch = [jax.device_get(steps.batch_statistics_step(state.params, state.batch_stats, b, key))
              for b in batches]
  # A training step normalises with the batch's statistics and moves each running average 10% of the
  # way towards them (momentum 0.9), in every layer, whatever the running averages held before.
  before = jax.device_get(state.batch_stats)
  after, _ = steps.train_step(jax.tree.map(jnp.copy, state), batches[0], key)
  expected = jax.tree.map(lambda old, new: 0.9 * old + 0.1 * new, before, of_batch[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(after.batch_stats), expected)
  assert len(jax.tree.leaves(before)) >= 10   # the stem, the module's branches, the residual block
  # Over several batches: the mean of the batches' statistics.
  precise = train.precise_batch_stats(steps, state.params, state.batch_stats, iter(local), 2, key)
  jax.tree.map(lambda p, a, b: np.testing.assert_allclose(p, (a + b) / 2, rtol=1e-6),
               jax.device_get(precise), *of_batch)
  assert not np.allclose(of_batch[0]['stem']['bn']['mean'], of_batch[1]['stem']['bn']['mean'])


@pytest.mark.slow
def test_precise_bn_evaluates_and_saves_statistics_recomputed_at_the_final_weights(tmp_path, fashion_dir,
                                                                                  monkeypatch):
  monkeypatch.setattr(train, 'build_model', lambda config, num_classes: TinyInception(num_classes=num_classes))

  def run(name, precise_bn_batches, **overrides):
    config = tiny_config(fashion_dir, ema_decay=0.0, precise_bn_batches=precise_bn_batches, **overrides)
    results = train.train_and_evaluate(config, str(tmp_path / name))
    return config, results, checkpoint.Checkpointer(str(tmp_path / name)).manager.restore(4)

  _, plain, running = run('plain', 0)
  config, precise, saved = run('precise', 3)
  jax.tree.map(np.testing.assert_array_equal, saved['params'], running['params'])   # training as before
  # The checkpoint holds the statistics of the run's first three training batches at the final weights,
  # and the evaluation used them.
  (steps,) = train._last_steps.values()
  spec = data.ImageSpec.for_model(models.model_info('lenet'), 28, 1.0)
  stream = data.train_batches(data.create_source('fashion_mnist', fashion_dir), spec, 8, seed=0,
                              augment=data.TrainAugment(area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0)))
  recomputed = train.precise_batch_stats(steps, saved['params'], running['batch_stats'], stream, 3,
                                         jax.random.fold_in(jax.random.key(0), 2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), saved['batch_stats'],
               jax.device_get(recomputed))
  assert not np.allclose(saved['batch_stats']['stem']['bn']['var'], running['batch_stats']['stem']['bn']['var'])
  evaluated = train.evaluate(steps, saved['params'], saved['batch_stats'],
                             data.eval_batches(data.create_source('fashion_mnist', fashion_dir), spec, 8))
  assert precise['eval/loss'] == pytest.approx(evaluated['loss'], rel=1e-6)
  assert precise['eval/loss'] != plain['eval/loss']
  # A finished run, run again with precise BN, is evaluated again as the config now says.
  shutil.copytree(tmp_path / 'plain', tmp_path / 'plain_again')
  _, again, _ = run('plain_again', 3)
  assert again == precise
  with pytest.raises(ValueError, match=r'precise_bn_batches must be 0 \(off\) or a positive number of batches, got -1'):
    run('plain_again', -1)
  assert checkpoint.Checkpointer(str(tmp_path / 'plain_again')).latest_step() == 4


@pytest.mark.slow
def test_eight_device_step_equals_one_device_step_with_global_batch_norm():
  assert jax.device_count() == 8
  one, m1 = _one_step(jax.devices()[:1])
  eight, m8 = _one_step(jax.devices())
  # The same computation up to the order of float32 sums.
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['l2_grads'], m8['l2_grads'], rtol=1e-5)
  for tree in ('params', 'batch_stats'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 getattr(one, tree), getattr(eight, tree))
  # Per-device statistics (2 examples per device) really are a different computation.
  per_device, _ = _one_step(jax.devices(), bn_per_device=True)
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), one.params, per_device.params))
  assert max(diffs) > 1e-4


def _cli(*args, cwd=ROOT, **env):
  return run_module('experiments.imagenet', *args, cwd=cwd, **env)


@pytest.mark.parametrize('args,message', [
    (['--config=v3', '--config.no_such_key=1'], 'no_such_key'),
    (['--config=v3', '--config.batch_size=large'], 'batch_size'),
    (['--config=v9'], "unknown preset 'v9'; valid presets:"),
    (['--config=v3', '--config.batch_size=12'], 'batch_size 12 is not divisible by the 8 devices'),
    (['--config=v3', '--config.batch_size=0'], 'batch_size must be a positive integer, got 0'),
    (['--config=v3', '--config.input_autotune=yes'], "input_autotune must be one of 'auto', 'on', 'off'"),
])
def test_config_errors_are_one_clear_line(tmp_path, args, message):
  result = _cli(*args, f'--workdir={tmp_path}/w')
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_preset_path_form_and_overrides(tmp_path, fashion_dir):
  result = _cli('--config=experiments/configs/v3.py:fashion_mnist', f'--workdir={tmp_path}/w',
                '--config.model=googlenet', '--config.image_size=32', '--config.total_steps=2',
                '--config.warmup_steps=0', '--config.batch_size=8', '--config.eval_batch_size=16',
                '--config.model_overrides.dropout_rate=0.0', f'--config.data_dir={fashion_dir}',
                JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'), **ONE_DEVICE)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'final test accuracy over all 13 examples' in result.stdout
  # The wall time, with what this machine computes to read it by.
  assert re.search(r'^wall time \d+m\d\ds \(2048² float32 matrix product on this machine: [\d,]+ GFLOP/s\)$',
                   result.stdout, re.M), result.stdout[-500:]
  saved = json.load(open(tmp_path / 'w' / 'config.json'))
  assert saved['model'] == 'googlenet' and saved['model_overrides']['dropout_rate'] == 0.0
  assert any((tmp_path / 'cache').iterdir())   # the compiled programs, for a resumed run


@pytest.mark.slow
def test_the_compilation_cache_is_on_unless_turned_off(tmp_path):
  # A run that stops at a bad batch size has turned the cache on (its directory exists) or not.
  for switch, on in ((), True), (('--nocompilation_cache',), False):
    cache = tmp_path / f'cache_{on}'
    result = _cli('--config=v3', '--config.batch_size=12', f'--workdir={tmp_path}/w', *switch,
                  JAX_COMPILATION_CACHE_DIR=str(cache))
    assert result.returncode == 2 and 'not divisible' in result.stderr
    assert cache.is_dir() == on


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_statistics_and_loss():
  f32, m32 = _one_step(jax.devices()[:1])
  bf16, m16 = _one_step(jax.devices()[:1], dtype='bfloat16')
  leaves = jax.tree.leaves((bf16.params, bf16.batch_stats, bf16.opt_state, bf16.ema_params))
  assert {x.dtype for x in leaves if np.issubdtype(x.dtype, np.floating)} == {np.dtype('float32')}
  assert m16['loss'].dtype == np.float32
  np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=2e-2)  # bf16 keeps 8 bits of mantissa
  # (The gradients are not compared: at initialisation the backward pass through many train-mode
  # BatchNorms amplifies rounding, and the two agree only in rough direction.)
  # The activations are bfloat16, the logits float32.
  c = tiny_config('', model='bn_inception', dtype='bfloat16')
  c.model_overrides = ml_collections.ConfigDict({})
  model = train.build_model(c, 10)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  out, inter = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, capture_intermediates=True,
                                                          mutable=['batch_stats', 'intermediates']), variables, x)
  assert inter['intermediates']['inception_3a']['__call__'][0].dtype == jnp.bfloat16
  assert out.logits.dtype == jnp.float32


def test_v3_optimizer_follows_tf_rmsprop_staircase_and_clipping_by_hand():
  from experiments.configs import v3
  c = v3.get_config()
  tx, schedule = train.build_optimizer(c, total_steps=100, steps_per_epoch=3, global_batch=c.batch_size)
  rng = np.random.default_rng(0)
  w = {'conv': {'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}}
  opt_state = tx.init(w)
  x = w['conv']['kernel'].astype(np.float64)
  ms, mom = np.ones_like(x), np.zeros_like(x)   # TF's RMSProp starts its accumulator at 1
  for t in range(14):
    g = rng.normal(size=x.shape) * (3.0 if t % 2 else 0.1)  # every other step exceeds the 2.0 norm
    g_clipped = g * min(1.0, 2.0 / np.linalg.norm(g))
    lr = 0.045 * 0.94 ** (t // 6)  # decay every 2 epochs = 6 steps, staircase
    ms = 0.9 * ms + 0.1 * g_clipped ** 2
    mom = 0.9 * mom + lr * g_clipped / np.sqrt(ms + 1.0)
    x = x - mom
    assert float(schedule(t)) == pytest.approx(lr, rel=1e-6)
    updates, opt_state = tx.update({'conv': {'kernel': g.astype(np.float32)}}, opt_state, w)
    w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(w['conv']['kernel'], x, rtol=1e-5, atol=1e-6)


def three_class_folder(root):
  """An ImageFolder of 3 classes × 10 small PNGs: a dataset with another class count than Fashion-MNIST."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for c in range(3):
    os.makedirs(os.path.join(root, f'class{c}'))
    for i in range(10):
      pixels = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, f'class{c}', f'{i}.png'))
  return f'imagefolder:{root}'


@pytest.mark.slow
def test_init_from_loads_the_trunk_and_makes_a_new_head(tmp_path, fashion_dir, capsys):
  source, tuned, fresh = (str(tmp_path / d) for d in ('source', 'tuned', 'fresh'))
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=3, learning_rate=1e-2), source)
  trained = checkpoint.read_weights(source)['params']
  # Fine-tune on 3 classes at a learning rate too small to move a float32 weight: after one step the
  # weights are those the run started from.
  folder = three_class_folder(str(tmp_path / 'folder'))
  still = dict(dataset=folder, total_steps=1, learning_rate=1e-30)
  train.train_and_evaluate(tiny_config('', init_from=source, **still), tuned)
  train.train_and_evaluate(tiny_config('', **still), fresh)
  assert 'init_from' in capsys.readouterr().out
  tuned_params, fresh_params = (checkpoint.read_weights(d)['params'] for d in (tuned, fresh))
  same = functools.partial(np.testing.assert_allclose, rtol=1e-7, atol=1e-20)  # zeros may move by 1e-30
  for layer in ('conv1', 'conv2', 'fc1', 'fc2'):
    jax.tree.map(same, tuned_params[layer], trained[layer])
  assert tuned_params['fc']['kernel'].shape == (84, 3)
  jax.tree.map(same, tuned_params['fc'], fresh_params['fc'])
  assert not np.array_equal(fresh_params['conv1']['conv']['kernel'], trained['conv1']['conv']['kernel'])


def test_init_from_a_mismatched_or_missing_checkpoint_is_one_clear_error(tmp_path, fashion_dir):
  source = str(tmp_path / 'source')
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=1), source)
  # At 32 pixels LeNet's first dense layer is wider: not a classifier, so not allowed to differ.
  with pytest.raises(ValueError, match=r'fc1/kernel has shape \(400, 120\) there but \(576, 120\) here'):
    train.train_and_evaluate(tiny_config(fashion_dir, init_from=source, image_size=32), str(tmp_path / 'a'))
  with pytest.raises(ValueError, match='no checkpoint there'):
    train.train_and_evaluate(tiny_config(fashion_dir, init_from=str(tmp_path / 'nowhere')), str(tmp_path / 'b'))
  assert checkpoint.Checkpointer(source).latest_step() == 1  # the source run is untouched


def test_init_from_reads_each_form_of_a_saved_run_and_exported_weights(tmp_path, fashion_dir):
  import orbax.checkpoint as ocp
  source = tmp_path / 'source'
  train.train_and_evaluate(tiny_config(fashion_dir, total_steps=2, checkpoint_every_steps=1), str(source))
  newest = checkpoint.read_weights(str(source))
  step1 = checkpoint.read_weights(str(source / 'checkpoints' / '1'))
  jax.tree.map(np.testing.assert_array_equal, checkpoint.read_weights(str(source / 'checkpoints')), newest)
  assert not np.array_equal(step1['params']['fc']['kernel'], newest['params']['fc']['kernel'])
  exported = str(tmp_path / 'exported')
  with ocp.StandardCheckpointer() as saver:
    saver.save(exported, {'params': newest['params'], 'batch_stats': {}})
  jax.tree.map(np.testing.assert_array_equal, checkpoint.read_weights(exported)['params'], newest['params'])


def test_init_from_report_counts_arrays_that_share_a_suffix():
  """Weights imported without BN scales leave ~100 '.../bn/scale' fresh; the report counts them."""
  names = [f'Mixed_{i}/branch1x1/bn/scale' for i in range(5)] + ['fc/bias', 'fc/kernel']
  assert train._summary(names) == '5 × */bn/scale, fc/bias, fc/kernel'
  assert train._summary(['a/bn/scale', 'b/bn/scale']) == 'a/bn/scale, b/bn/scale'
