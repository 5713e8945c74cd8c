"""experiments.op_profile: a profiler trace joined to the optimised HLO, op by op and by kind of work."""

import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import run_module
from experiments import op_profile


def _train_like_step(x, k, w):
  """A convolution, a matrix product and a reduction, differentiated: forward and backward ops."""
  def loss(k, w):
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    return jnp.mean((y.reshape(y.shape[0], -1) @ w) ** 2)
  return jax.grad(loss, argnums=(0, 1))(k, w)


def _compiled():
  x, k, w = jnp.ones((8, 16, 16, 8)), jnp.ones((3, 3, 8, 16)) / 72, jnp.ones((16 * 16 * 16, 10)) / 4096
  return jax.jit(_train_like_step).lower(x, k, w).compile(), (x, k, w)


def test_the_optimised_program_says_what_each_op_computes_and_where_it_came_from():
  compiled, _ = _compiled()
  ops = op_profile.parse_hlo(compiled.as_text())
  kinds = {(o['category'], o['phase']) for o in ops.values()}
  assert ('convolution', 'forward') in kinds and ('matmul', 'backward') in kinds
  assert all(o['category'] in op_profile.CATEGORIES for o in ops.values())
  assert op_profile.module_name(compiled.as_text()) == 'jit__train_like_step'


@pytest.mark.parametrize('opcodes,category', [
    ({'fusion', 'convolution', 'add'}, 'convolution'), ({'dot', 'multiply'}, 'matmul'),
    ({'reduce', 'multiply'}, 'reduction'), ({'reduce-window'}, 'pooling'), ({'all-reduce'}, 'collective'),
    ({'copy', 'bitcast', 'parameter'}, 'layout'), ({'transpose'}, 'layout'),
    ({'add', 'multiply', 'parameter'}, 'elementwise'), ({'while'}, 'other')])
def test_kinds_of_work(opcodes, category):
  assert op_profile._category(opcodes) == category


@pytest.mark.parametrize('source,phase', [
    ('jit(step)/jvp(Net)/conv/conv_general_dilated', 'forward'),
    ('jit(step)/transpose(jvp(Net))/conv/conv_general_dilated', 'backward'),
    ('jit(step)/add', 'rest'), ('', '')])
def test_phases_come_from_autodiff_names(source, phase):
  assert op_profile._phase(source) == phase


def test_a_traced_step_is_broken_down_by_op_and_kind(tmp_path):
  compiled, args = _compiled()
  jax.block_until_ready(compiled(*args))
  jax.profiler.start_trace(str(tmp_path), create_perfetto_trace=True)
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  jax.profiler.stop_trace()
  rows = op_profile.profile_table(compiled.as_text(), str(tmp_path), steps=2)
  assert [r['ms_per_step'] for r in rows] == sorted((r['ms_per_step'] for r in rows), reverse=True)
  assert all(r['ms_per_step'] > 0 for r in rows)
  table = op_profile.by_category(rows)
  assert table['convolution']['total'] > 0 and table['matmul']['total'] > 0
  assert sum(t['total'] for t in table.values()) == pytest.approx(sum(r['ms_per_step'] for r in rows))
  json_path, md_path = op_profile.write(rows, str(tmp_path / 'out'))
  assert json.load(open(json_path))['ops'][0]['op'] == rows[0]['op']
  assert open(md_path).read().startswith('| kind | ms/step |')


def test_a_missing_trace_is_an_error(tmp_path):
  compiled, _ = _compiled()
  with pytest.raises(FileNotFoundError, match='no perfetto_trace'):
    op_profile.profile_table(compiled.as_text(), str(tmp_path), steps=1)


@pytest.mark.slow
def test_the_benchmark_profiles_its_train_step(tmp_path):
  result = run_module('experiments.benchmark', '--model=lenet', '--batch=8', '--size=32', '--steps=1',
                      '--warmup=0', '--json', f'--profile={tmp_path / "profile"}',
                      JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'cache'))
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  by_kind = record['ms_per_step_by_kind']
  assert by_kind['convolution'] > 0 and by_kind['matmul'] > 0   # LeNet: two convolutions, three dense
  saved = json.load(open(tmp_path / 'profile' / 'ops.json'))
  assert {k: v['total'] for k, v in saved['by_category'].items()} == pytest.approx(by_kind)
  assert '| convolution |' in result.stdout


# --- a GPU's trace: a stored fixture shaped as jax.profiler writes one for a CUDA device -----------------

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')


@pytest.fixture
def gpu_trace(tmp_path):
  """Two steps of a cuDNN/cuBLAS train step (tests/fixtures/gpu_train_step.*) laid out as a profile."""
  directory = tmp_path / 'plugins' / 'profile' / '2026_12_07_00_00_00'
  directory.mkdir(parents=True)
  with open(os.path.join(FIXTURES, 'gpu_train_step.trace.json'), 'rb') as f, \
      gzip.open(directory / 'perfetto_trace.json.gz', 'wb') as out:
    out.write(f.read())
  with open(os.path.join(FIXTURES, 'gpu_train_step.hlo.txt')) as f:
    return f.read(), str(tmp_path)


def test_cudnn_and_cublas_calls_are_convolutions_and_matrix_products_by_pass():
  with open(os.path.join(FIXTURES, 'gpu_train_step.hlo.txt')) as f:
    ops = op_profile.parse_hlo(f.read())
  assert ops['custom-call.1']['work'] == 'convolution forward'
  assert ops['custom-call.2']['work'] == 'convolution backward: input gradient'
  assert ops['custom-call.3']['work'] == 'convolution backward: kernel gradient'
  assert ops['custom-call.9']['category'] == 'matmul' and ops['custom-call.9']['phase'] == 'forward'
  assert ops['fusion.2']['work'] == 'reductions (BatchNorm statistics, norms)'
  assert ops['fusion.1']['work'] == 'elementwise fusions (BatchNorm, activations)'
  assert ops['copy.5']['work'] == 'layout: transposes and copies'
  assert ops['fusion.7']['work'] == 'optimizer update and metrics'


def test_a_gpu_trace_is_broken_down_by_kind_with_the_idle_gaps(gpu_trace):
  hlo, trace_dir = gpu_trace
  b = op_profile.step_breakdown(hlo, trace_dir, steps=2)
  # Per step, as the fixture lays the kernels out (µs): 400 forward convolution, 500 input gradient,
  # 600 kernel gradient, 80 matrix product, 150 reduction, 100 elementwise, 50 copy, 120 update, 30 memcpy;
  # the host's launch events do not count.
  assert b['work'] == pytest.approx({
      'convolution forward': 0.4, 'convolution backward: input gradient': 0.5,
      'convolution backward: kernel gradient': 0.6, 'matrix products': 0.08,
      'reductions (BatchNorm statistics, norms)': 0.15, 'elementwise fusions (BatchNorm, activations)': 0.1,
      'layout: transposes and copies': 0.05, 'optimizer update and metrics': 0.12, 'memory copies': 0.03})
  assert list(b['work']) == [w for w in op_profile.WORK if w in b['work']]   # the report's order
  # From the first kernel (1,000 µs) to the last copy's end (6,110 µs): 2.555 ms a step, 2.03 of it busy.
  assert b['step_ms'] == pytest.approx(2.555) and b['busy_ms'] == pytest.approx(2.03)
  assert b['idle_ms'] == pytest.approx(0.525)
  top = b['top_kernels']
  assert [k['hlo_op'] for k in top[:3]] == ['custom-call.3', 'custom-call.2', 'custom-call.1']
  assert top[0]['kernel'].startswith('sm90_xmma_wgrad') and top[0]['share_of_busy'] == pytest.approx(0.6 / 2.03)
  assert top[-1]['work'] == 'memory copies' and len(top) == 9
  text = op_profile.breakdown_markdown(b)
  assert '| idle gaps between kernels | 0.53 | 20.5% |' in text
  assert '| convolution backward: kernel gradient | 0.60 | 23.5% |' in text


def test_only_the_devices_events_count_where_a_device_ran(gpu_trace):
  hlo, trace_dir = gpu_trace
  seconds = op_profile.op_seconds(trace_dir, 'jit_train_step')
  assert seconds['custom-call.3'] == pytest.approx(2 * 600e-6)   # not the host's 4 µs launches on top
