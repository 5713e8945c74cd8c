"""The `kernels` switch: 'lax' is stock flax/optax/lax, 'cpu' the XLA:CPU formulations, 'auto' picks by
backend; both compute the same training step."""

import collections
import dataclasses
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from experiments.configs import base
from inception_jax import kernels, models, train, xla_cpu, xla_gpu
from inception_jax import step as step_lib
from tiny_config import TinyInception


def test_auto_is_cpu_on_the_cpu_backend_and_lax_on_any_other(monkeypatch):
  assert kernels.resolve('auto') == 'cpu'   # the suite runs on the CPU
  for backend in ('gpu', 'tpu', 'cuda', 'rocm'):
    monkeypatch.setattr(jax, 'default_backend', lambda: backend)
    assert kernels.resolve('auto') == 'lax'
    assert kernels.get('auto') is kernels.LAX
  assert kernels.get('cpu') is kernels.CPU   # an explicit setting holds on any backend


def test_lax_is_stock_flax_optax_and_lax():
  assert kernels.LAX.conv_general_dilated is lax.conv_general_dilated
  assert kernels.LAX.batch_norm is nn.BatchNorm
  assert kernels.LAX.clip_by_global_norm is optax.clip_by_global_norm
  assert kernels.CPU.batch_norm is xla_cpu.BatchNorm
  # gpu is lax but for BatchNorm.
  assert kernels.GPU.batch_norm is xla_gpu.BatchNorm and kernels.get('gpu') is kernels.GPU
  assert kernels.GPU.conv_general_dilated is lax.conv_general_dilated
  assert kernels.GPU.clip_by_global_norm is optax.clip_by_global_norm


@pytest.mark.parametrize('bad', ['tpu', 'LAX', ''])
def test_an_unknown_setting_is_one_clear_error(bad):
  with pytest.raises(ValueError, match=r"kernels must be 'auto', 'lax', 'cpu' or 'gpu', got"):
    models.create_model('inception_v3', kernels=bad)
  config = base.get_config()
  config.kernels = bad
  with pytest.raises(ValueError, match=r"kernels must be 'auto', 'lax', 'cpu' or 'gpu'"):
    train.build_model(config, num_classes=10)


def _primitives(jaxpr) -> collections.Counter:
  """Primitive names of a jaxpr, counted inside nested calls (custom_vjp, remat, pjit) too."""
  counts = collections.Counter()
  for e in jaxpr.eqns:
    counts[e.primitive.name] += 1
    for value in e.params.values():
      for inner in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(inner, 'jaxpr', inner)
        if hasattr(inner, 'eqns'):
          counts += _primitives(inner)
  return counts


def _training_gradient_primitives(name, setting):
  info = models.model_info(name)
  size = max(info.min_input_size, info.min_aux_input_size)
  model = models.create_model(name, num_classes=5, kernels=setting)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(0)}, x,
                                                train=True))

  def loss(variables):
    out, _ = model.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
    return jnp.sum(out.logits) + sum(jnp.sum(a) for a in out.aux_logits)

  return _primitives(jax.make_jaxpr(jax.grad(loss))(variables).jaxpr)


@pytest.mark.slow
@pytest.mark.parametrize('name', models.list_models())
def test_every_model_passes_the_setting_to_every_layer(name):
  # Under 'lax' nothing of xla_cpu is left anywhere in the network (its formulations are custom
  # gradients or matrix products standing in for convolutions); under 'cpu' the network is computed
  # differently.
  stock, tuned = (_training_gradient_primitives(name, k) for k in ('lax', 'cpu'))
  assert not {p for p in stock if p.startswith('custom_vjp')}, f'{name}: a CPU formulation under lax'
  assert stock != tuned


def test_the_setting_is_resolved_once_into_the_object_every_layer_takes():
  model = models.create_model('xception', kernels='cpu')
  assert model.kernels is kernels.CPU and kernels.of(model) is kernels.CPU
  assert kernels.of(nn.Dense(3)) is kernels.LAX   # a module from elsewhere compiles as stock JAX does
  assert models.create_model('xception', kernels=kernels.LAX).kernels is kernels.LAX
  # A separable convolution's two convolutions follow it too: under 'cpu' the 1×1 pointwise one is a
  # matrix product (the depthwise one, grouped, is lax's under both).
  from inception_jax.models import layers
  x = jnp.zeros((2, 8, 8, 4))

  def convolutions(setting):
    conv = layers.SeparableConv(6, kernels=setting)
    variables = conv.init(jax.random.key(0), x)
    return _primitives(jax.make_jaxpr(conv.apply)(variables, x).jaxpr)['conv_general_dilated']

  assert (convolutions(kernels.LAX), convolutions(kernels.CPU)) == (2, 1)


def _convolutions_by_runner(hlo: str) -> dict[str, int]:
  """An optimised CPU program's convolutions: how many run inside YNNPACK fusions, how many are XLA's own."""
  bodies = dict(re.findall(r'^(%\S+) \(.*?\{\n(.*?)\n\}', hlo, re.M | re.S))
  fusions = re.findall(r'kind=kCustom, calls=(%[\w.\-]+).*"__ynn_fusion"', hlo)
  library = sum(bodies[name].count(' convolution(') for name in fusions)
  return {'ynnpack': library, 'xla': hlo.count(' convolution(') - library}


def test_the_cpu_setting_compiles_xla_s_own_convolutions_where_lax_leaves_them_to_the_library():
  # XLA:CPU gives convolutions of this size to the YNNPACK library unless its options say otherwise; the
  # `cpu` setting's programs keep them (a cheaper training step, docs/performance.md).
  def loss(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.square(y))

  x, w = jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
  runners = {k.name: _convolutions_by_runner(k.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text())
             for k in (kernels.LAX, kernels.CPU)}
  # Three convolutions each: the forward pass, the input's gradient, the kernel's gradient.
  assert runners == {'lax': {'ynnpack': 3, 'xla': 0}, 'cpu': {'ynnpack': 0, 'xla': 3}}


def test_every_program_of_the_training_steps_compiles_with_the_setting_s_options():
  # An option XLA does not know fails the compilation of each program that is given it.
  bad = dataclasses.replace(kernels.CPU, compiler_options=(('xla_no_such_option', '1'),))
  config = base.get_config()
  config.image_size = 18
  model = TinyInception(num_classes=5, kernels=bad)
  tx, schedule = train.build_optimizer(config, total_steps=10, steps_per_epoch=10, global_batch=8)
  steps = step_lib.JittedSteps(model, tx, schedule, config, mesh=step_lib.data_mesh(jax.devices()[:1]))
  state = jax.eval_shape(steps.init, jax.random.key(0))   # traces, compiles nothing
  batch = {'image': jax.ShapeDtypeStruct((8, 18, 18, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((8,), jnp.int32)}
  programs = {
      'init': lambda: steps.init.lower(jax.random.key(0)),
      'train': lambda: steps.train_step.lower(state, batch, jax.random.key(1)),
      'eval': lambda: steps.eval_step.lower(state.params, state.batch_stats,
                                            {**batch, 'mask': jax.ShapeDtypeStruct((8,), jnp.bool_)}),
      'statistics': lambda: steps.batch_statistics_step.lower(state.params, state.batch_stats, batch,
                                                              jax.random.key(2)),
  }
  for name, lower in programs.items():
    with pytest.raises(Exception, match="No such compile option: 'xla_no_such_option'"):
      lower().compile()


def _step_results(setting):
  config = base.get_config()
  config.kernels = setting
  config.optimizer, config.learning_rate, config.clip_norm = 'sgd', 0.1, 0.5   # the clip is active
  config.label_smoothing, config.ema_decay = 0.1, 0.99
  model = TinyInception(num_classes=5, kernels=kernels.get(setting), dtype=jnp.float64,
                        param_dtype=jnp.float64)
  tx, schedule = train.build_optimizer(config, total_steps=10, steps_per_epoch=10, global_batch=4)
  state = step_lib.init_state(model, tx, jax.random.key(0), image_size=18, ema=True)
  step = jax.jit(step_lib.make_train_step(model, tx, schedule, config))
  x = jax.random.normal(jax.random.key(1), (4, 18, 18, 3), jnp.float64)
  batch = {'image': x, 'label': jnp.array([0, 1, 2, 3])}
  for _ in range(2):
    state, metrics = step(state, batch, jax.random.key(2))
  return state, metrics


@pytest.mark.slow
@pytest.mark.parametrize('setting', ['cpu', 'gpu'])
def test_every_setting_gives_lax_training_step_in_float64(setting):
  # A small Inception network (strided stem, 1×1/3×3/1×3 convolutions, average and max pools, a residual
  # block), two steps of the full train step: loss, gradients' norm, clipping, update, BN statistics, EMA.
  # (SGD: Adam would divide near-zero gradients by their own root and magnify rounding.)
  with jax.enable_x64(True):
    (stock, stock_metrics), (tuned, tuned_metrics) = (_step_results(k) for k in ('lax', setting))
    assert stock.params['stem']['conv']['kernel'].dtype == jnp.float64
    assert float(stock_metrics['l2_grads']) > 0.5   # clipping changed the update
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), stock, tuned)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), stock_metrics,
                 tuned_metrics)
    # Not the same by construction: the two settings ran different programs.
    assert stock_metrics.keys() == tuned_metrics.keys()


@pytest.mark.slow
def test_the_float32_gradient_error_tool_measures_against_float64():
  from conftest import run_module
  result = run_module('experiments.grad_precision', '--model=lenet', '--size=28', '--batch=4')
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  for setting in ('lax', 'cpu'):
    errors = record[setting]
    # Rounding, not a float64 gradient compared with itself, and no more than float32 rounding on LeNet.
    assert 0 < errors['median_array'] <= errors['max_array'] < 1e-5
    assert 0 < errors['whole'] < 1e-5
