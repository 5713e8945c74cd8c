"""experiments.benchmark: finite numbers, the JSON line, the compilation cache, peers, bad input."""

import json
import math

import jax
import numpy as np
import pytest

from conftest import ONE_DEVICE, run_module
from experiments.configs import base
from inception_jax import step_timing

TINY = ['--model=lenet', '--batch=8', '--size=32', '--steps=2', '--warmup=1', '--json']


def _record(result):
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_prints_finite_numbers_and_a_json_last_line(tmp_path):
  record = _record(run_module('experiments.benchmark', *TINY, '--noweight_norms',
                              JAX_COMPILATION_CACHE_DIR=str(tmp_path)))
  assert {'model', 'batch', 'size', 'train_images_per_sec', 'infer_images_per_sec', 'compile_s', 'mfu'} <= set(record)
  assert (record['model'], record['batch'], record['size'], record['weight_norms']) == ('lenet', 8, 32, False)
  for key in ('train_images_per_sec', 'infer_images_per_sec', 'compile_s', 'step_ms', 'flops_per_step',
              'peak_flops'):
    assert math.isfinite(record[key]) and record[key] > 0, key
  assert 0 < record['mfu'] < 1
  assert record['mfu'] == pytest.approx(
      record['flops_per_step'] / (record['step_ms'] / 1e3) / record['peak_flops'])


def test_mfu_counts_the_step_as_jax_hands_it_to_any_backend():
  """The FLOPs MFU divides by are XLA's count of the step before a backend rewrites it (on GPUs the compiled
  program hides its convolutions in cuDNN calls): on the CPU, one device, that is the compiled count."""
  size = 32
  def config(batch_size):
    c = base.get_config()
    c.model, c.batch_size, c.image_size, c.aux_logits, c.kernels = 'lenet', batch_size, size, False, 'lax'
    return c

  c = config(16)
  _, steps_ = step_timing.training_steps(c, 1000, devices=jax.devices()[:1])
  rng = jax.random.key(0)
  batch = {'image': np.zeros((16, size, size, 3), np.float32), 'label': np.zeros(16, np.int32)}
  compiled = steps_.train_step.lower(steps_.init(rng), batch, rng).compile().cost_analysis()
  compiled = compiled[0] if isinstance(compiled, list) else compiled
  assert step_timing.step_flops(c) == pytest.approx(compiled['flops'], rel=0.02)
  # The per-image part grows with the batch, the rest (the update of the parameters) does not.
  flops = {batch_size: step_timing.step_flops(config(batch_size)) for batch_size in (4, 8, 16)}
  assert flops[16] - flops[8] == pytest.approx(2 * (flops[8] - flops[4]), rel=0.01)


@pytest.mark.slow
def test_a_second_run_reuses_the_compilation_cache(tmp_path):
  first = _record(run_module('experiments.benchmark', *TINY, JAX_COMPILATION_CACHE_DIR=str(tmp_path)))
  assert first['cache_hits'] == 0 and not first['executable_loaded']
  assert len(list((tmp_path / 'executables').glob('*.pkl'))) == 1   # the train step, kept whole
  second = _record(run_module('experiments.benchmark', *TINY, JAX_COMPILATION_CACHE_DIR=str(tmp_path)))
  assert second['executable_loaded']      # the train step, loaded without tracing ...
  assert second['train_loss'] == first['train_loss']   # ... is the same program
  # JAX's cache alone: traced again, XLA's work loaded.
  jax_only = _record(run_module('experiments.benchmark', *TINY, '--noexecutable_cache',
                                JAX_COMPILATION_CACHE_DIR=str(tmp_path)))
  assert not jax_only['executable_loaded'] and jax_only['cache_hits'] >= 1
  assert jax_only['train_loss'] == first['train_loss']


@pytest.mark.slow
def test_torchvision_peer_is_timed_in_the_same_setup(tmp_path):
  record = _record(run_module('experiments.benchmark', '--model=googlenet', '--aux=off', '--batch=2',
                              '--size=64', '--steps=1', '--warmup=0', '--peer=torchvision', '--json',
                              JAX_COMPILATION_CACHE_DIR=str(tmp_path), **ONE_DEVICE))
  assert record['peer'] == 'torchvision' and record['train_images_per_sec'] > 0
  assert 0 < record['mfu'] < 1


@pytest.mark.slow
def test_keras_peer_trains_its_own_network_with_the_jax_backend(tmp_path):
  record = _record(run_module('experiments.benchmark', '--model=v3', '--batch=2', '--size=75', '--steps=1',
                              '--warmup=0', '--peer=keras', '--json', KERAS_BACKEND='',
                              XLA_FLAGS='--xla_force_host_platform_device_count=1',
                              JAX_COMPILATION_CACHE_DIR=str(tmp_path)))
  assert record['peer'] == 'keras' and not record['aux'] and record['train_images_per_sec'] > 0
  assert 0 < record['mfu'] < 1


@pytest.mark.parametrize('args,message', [
    (['--model=nope'], "unknown model 'nope'"),
    (['--model=v3', '--size=60'], "below inception_v3's minimum of 75 pixels"),
    (['--model=v3', '--size=90', '--aux=on'], "below inception_v3's minimum of 107 pixels with auxiliary heads"),
    (['--model=lenet', '--batch=0'], '--batch must be a positive multiple'),
    (['--model=lenet', '--peer=keras'], 'keras has no lenet'),
    (['--model=googlenet', '--peer=torchvision', '--profile=unused'], '--profile traces our train step'),
    (['--model=lenet', '--profile=README.md'], '--profile=README.md is a file; give a directory'),
])
def test_bad_input_is_one_clear_error(args, message):
  result = run_module('experiments.benchmark', *args)
  assert result.returncode == 2
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_max_batch_is_the_largest_that_fits_with_and_without_remat(tmp_path):
  records = {}
  for remat in ([], ['--remat=dots']):
    records[bool(remat)] = _record(run_module(
        'experiments.benchmark', '--model=lenet', '--size=28', '--max_batch', '--memory_gb=0.02', '--json',
        *remat, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_COMPILATION_CACHE_DIR=str(tmp_path)))
  for record in records.values():
    limit, best = record['memory_limit_bytes'], record['max_batch']
    needs = {t['batch']: t['bytes'] for t in record['tried']}
    assert needs[best] <= limit < needs[best + 1]   # both neighbours were compiled and measured
  assert records[True]['remat'] == 'dots' and records[False]['remat'] == ''
  # LeNet's backward pass keeps its conv/dense outputs either way, plus the activations without remat.
  assert 0 < records[True]['saved_bytes_per_image'] < records[False]['saved_bytes_per_image']


@pytest.mark.parametrize('step,most_compilations', [(None, 12), (64, 5)])
def test_max_batch_search_brackets_the_answer_in_a_few_compilations(monkeypatch, step, most_compilations):
  """XLA's buffer assignment is close to linear in the batch, not exactly: the search predicts from two
  compilations, then confirms that the answer fits and one step more does not."""
  import types
  from inception_jax import memory
  def need(c, num_classes):   # a fixed part, a per-image part, and a bump every 50 images
    return 10_000_000 + 37_000 * c.batch_size + 13_000 * (c.batch_size // 50)
  monkeypatch.setattr(memory, 'step_memory_bytes', need)
  limit = 150_000_000
  best, unit, tried = memory.largest_batch(types.SimpleNamespace(batch_size=0), limit, step=step)
  assert unit == (step or jax.device_count()) and unit % jax.device_count() == 0
  needs = dict(tried)
  assert best % unit == 0 and needs[best] <= limit < needs[best + unit]
  assert len(tried) <= most_compilations


@pytest.mark.slow
@pytest.mark.parametrize('remat,at_most', [('blocks', 0.75), ('dots', 0.5)])
def test_remat_shrinks_what_the_backward_pass_keeps(remat, at_most):
  # Measured on the program JAX hands to the compiler, so it holds for any backend (XLA:CPU may still
  # schedule the recomputation early: its own memory figure is not the test).
  from experiments.configs import base
  from inception_jax import memory
  config = base.get_config()
  config.model, config.batch_size, config.image_size, config.aux_logits = 'inception_v3', 2, 75, False
  kept = {}
  for mode in ('', remat):
    config.remat = mode
    kept[mode] = memory.saved_bytes_per_image(config)
  # v3's 35×35 modules alone keep more than 1 MiB per image at 75 px.
  assert kept[''] > 2**20 and kept[remat] <= at_most * kept['']


def test_the_input_benchmark_measures_ours_against_a_plain_tf_data_pipeline():
  result = run_module('experiments.benchmark_input', '--fake_jpegs=24', '--size=64', '--batch=8', '--steps=3',
                      '--warmup=1', '--reference', '--rounds=2', '--json')
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  assert len(record['rounds']) == len(record['reference_rounds']) == len(record['ratios']) == 2
  assert record['images_per_sec'] > 0 and record['reference_images_per_sec'] > 0
  ratios = [a / b for a, b in zip(record['rounds'], record['reference_rounds'])]
  assert record['ratios'] == pytest.approx(ratios)
  assert record['ratio_to_reference'] == pytest.approx(sum(ratios) / 2)   # the median of two
  assert record['images_per_sec_per_core'] == pytest.approx(record['images_per_sec'] / record['cores'])
  assert record['cpu_ms_per_image'] > 0 and record['reference_cpu_ms_per_image'] > 0
  assert record['cpu_ratio_to_reference'] == pytest.approx(
      record['reference_cpu_ms_per_image'] / record['cpu_ms_per_image'])
  assert 'ours / reference' in result.stdout


def test_the_reference_needs_jpeg_files():
  result = run_module('experiments.benchmark_input', '--source=fashion_mnist', '--reference')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith('error: --reference times the training split of JPEG')
