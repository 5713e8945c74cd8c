"""The training and evaluation steps are ready for GPUs and TPUs, checked without the hardware: Inception-v3's
steps (bfloat16 compute, `kernels='auto'` as an accelerator resolves it, i.e. `lax`) export for `tpu` and
`cuda`, on one device and sharded over a mesh, and hold nothing that only runs on a CPU."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments.configs import v3
from inception_jax import train

PLATFORMS = ('tpu', 'cuda')
# custom_call targets every backend implements (sharding annotations of the SPMD partitioner).
NEUTRAL_CUSTOM_CALLS = {'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape'}
BATCH, SIZE = 8, 299


def cpu_only(exported) -> list[str]:
  """The custom calls of an exported module other than the platform-neutral ones, by target: a CPU
  library call, a host callback. (jax.export refuses to export host callbacks in the first place.)"""
  text = exported.mlir_module()
  targets = re.findall(r'stablehlo\.custom_call @([\w.$-]+)', text)
  targets += re.findall(r'call_target_name = "([^"]+)"', text)
  return sorted({t for t in targets if t not in NEUTRAL_CUSTOM_CALLS})


def _steps(mesh, bn_per_device=False):
  config = v3.get_config()
  config.dtype, config.kernels, config.bn_per_device = 'bfloat16', 'lax', bn_per_device
  config.image_size = SIZE
  model = train.build_model(config, num_classes=1000)
  tx, schedule = train.build_optimizer(config, total_steps=1000, steps_per_epoch=100, global_batch=BATCH)
  steps = train.Steps(model, tx, schedule, config, mesh=mesh)
  state = jax.eval_shape(steps.init, jax.random.key(0))
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=steps.replicated), state)
  batch = {'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32, sharding=steps.sharded),
           'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=steps.sharded)}
  eval_batch = {**batch, 'mask': jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=steps.sharded)}
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=steps.replicated)
  return steps, state, batch, eval_batch, rng


@pytest.mark.parametrize('devices', [1, 8])
def test_v3_train_and_eval_steps_export_for_tpu_and_cuda_with_nothing_cpu_only(devices):
  mesh = train.data_mesh(jax.devices()[:devices])
  steps, state, batch, eval_batch, rng = _steps(mesh)
  exported = jax.export.export(steps.train_step, platforms=PLATFORMS)(state, batch, rng)
  assert exported.platforms == PLATFORMS and exported.nr_devices == devices
  assert cpu_only(exported) == []
  # bfloat16 compute: the convolutions of the exported step run on bfloat16 operands.
  assert re.search(r'stablehlo\.convolution.*bf16', exported.mlir_module())
  evaluated = jax.export.export(steps.eval_step, platforms=PLATFORMS)(state.params, state.batch_stats, eval_batch)
  assert evaluated.platforms == PLATFORMS and cpu_only(evaluated) == []


def test_the_per_device_bn_step_exports_too():
  steps, state, batch, _, rng = _steps(train.data_mesh(jax.devices()[:8]), bn_per_device=True)
  exported = jax.export.export(steps.train_step, platforms=PLATFORMS)(state, batch, rng)
  assert exported.nr_devices == 8 and cpu_only(exported) == []


def test_the_check_finds_host_callbacks_and_cpu_custom_calls():
  # A host callback cannot be exported at all (jax.export refuses it), so a step holding one fails above.
  def with_callback(x):
    jax.debug.callback(lambda v: None, x)
    return x * 2

  def with_pure_callback(x):
    return jax.pure_callback(lambda v: v, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  x = jax.ShapeDtypeStruct((4,), jnp.float32)
  for fn in (with_callback, with_pure_callback):
    # (jax 0.10 says so for pure_callback, and fails with a TypeError inside its lowering for
    # debug.callback; either way there is no exported step.)
    with pytest.raises((NotImplementedError, TypeError)):
      jax.export.export(jax.jit(fn), platforms=PLATFORMS)(x)
  # A CPU library call (LAPACK's eigensolver) is named by the check.
  exported = jax.export.export(jax.jit(jnp.linalg.eigh), platforms=('cpu',))(jax.ShapeDtypeStruct((4, 4),
                                                                                                 jnp.float32))
  assert any('lapack' in target for target in cpu_only(exported)), cpu_only(exported)
