"""The training and evaluation steps are ready for GPUs and TPUs, checked without the hardware: Inception-v3's
steps (bfloat16 compute, `kernels='auto'` as an accelerator resolves it, i.e. `lax`) export for `tpu` and
`cuda`, on one device and sharded over a mesh, and hold nothing that only runs on a CPU."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import io_callback
from jax.sharding import PartitionSpec as P

from experiments.configs import v3
from inception_jax import data, models, train
from inception_jax import step as step_lib

PLATFORMS = ('tpu', 'cuda')
# custom_call targets every backend implements (sharding annotations of the SPMD partitioner).
NEUTRAL_CUSTOM_CALLS = {'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape'}
BATCH, SIZE = 8, 299
# Host transfers (how a TPU runs a host callback); a step should have none.
HOST_TRANSFERS = re.compile(r'stablehlo\.(?:send|recv|infeed|outfeed)\b')


def custom_call_targets(module: str) -> list[str]:
  """Every custom_call target in a StableHLO module's text, sorted, each once."""
  return sorted(set(re.findall(r'stablehlo\.custom_call @([\w.$-]+)', module))
                | set(re.findall(r'call_target_name = "([^"]+)"', module)))


def cpu_only(module) -> list[str]:
  """What in a module (an `Exported` or StableHLO text) a GPU or TPU would not run: each custom call target
  but the platform-neutral ones (a CPU library call, a host callback) and each transfer to or from the host."""
  text = module if isinstance(module, str) else module.mlir_module()
  return ([t for t in custom_call_targets(text) if t not in NEUTRAL_CUSTOM_CALLS]
          + sorted({m.group(0) for m in HOST_TRANSFERS.finditer(text)}))


def export_for_accelerators(jitted, *args) -> jax.export.Exported:
  """`jitted` exported for tpu and cuda at `args`' shapes (lowering only), checked to hold nothing CPU-only.

  jax.export itself refuses a host callback (`jax.debug.callback`, `pure_callback`, `io_callback`) for
  these platforms; the module is then searched for what would get past it."""
  exported = jax.export.export(jitted, platforms=PLATFORMS)(*args)
  assert exported.platforms == PLATFORMS, exported.platforms
  text = exported.mlir_module()
  assert cpu_only(text) == [], f'CPU-only: {cpu_only(text)}; custom calls found: {custom_call_targets(text)}'
  return exported


def assert_shardings_as_given(exported, mesh, *args) -> None:
  """The exported function takes its arguments sharded as `args` say and returns everything replicated
  (on one device jax records no shardings; arguments the function does not read, the eval step's auxiliary
  head, are dropped from the module and have none either)."""
  if exported.nr_devices == 1:
    return
  given = [a.sharding.spec for a in jax.tree.leaves(args)]
  recorded = [None if s is None else s.spec for s in exported.in_shardings_jax(mesh)]
  assert [r for r in recorded if r is not None] == [g for g, r in zip(given, recorded) if r is not None]
  assert recorded.count(P('data')) == given.count(P('data')), 'a batch array lost its sharding'
  assert {s.spec for s in exported.out_shardings_jax(mesh)} == {P()}


def _steps(mesh, bn_per_device=False):
  config = v3.get_config()
  config.dtype, config.kernels, config.bn_per_device = 'bfloat16', 'lax', bn_per_device
  config.image_size = SIZE
  model = train.build_model(config, num_classes=1000)
  tx, schedule = train.build_optimizer(config, total_steps=1000, steps_per_epoch=100, global_batch=BATCH)
  # The images arrive as the input pipelines give them, uint8 pixels the steps normalise.
  spec = data.ImageSpec.for_model(models.model_info(config.model), SIZE)
  steps = step_lib.JittedSteps(model, tx, schedule, config, mesh=mesh, spec=spec)
  state = jax.eval_shape(steps.init, jax.random.key(0))
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=steps.replicated), state)
  batch = {'image': jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.uint8, sharding=steps.sharded),
           'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=steps.sharded)}
  eval_batch = {**batch, 'mask': jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=steps.sharded)}
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=steps.replicated)
  return steps, state, batch, eval_batch, rng


# Sharded over the suite's eight simulated CPU devices, what is checked is the module handed to the target's
# compiler: each argument's sharding (sdy.sharding attributes: state replicated, batch over 'data', as
# step_lib.JittedSteps gives them), the device count, and, for per-device BN, the shard_map (an sdy.manual_computation
# with its explicit all_reduces). The SPMD partitioner runs when the target compiles the module, so the
# collectives it adds for global-batch BN, and any custom call it emits then, are not in it and not checked.
@pytest.mark.slow
@pytest.mark.parametrize('devices', [1, 8])
def test_v3_train_step_exports_for_tpu_and_cuda_with_nothing_cpu_only(devices):
  mesh = step_lib.data_mesh(jax.devices()[:devices])
  steps, state, batch, _, rng = _steps(mesh)
  exported = export_for_accelerators(steps.train_step, state, batch, rng)
  assert exported.nr_devices == devices
  assert_shardings_as_given(exported, mesh, state, batch, rng)
  # bfloat16 compute: the convolutions of the exported step run on bfloat16 operands; the images come in
  # as uint8.
  assert re.search(r'stablehlo\.convolution.*bf16', exported.mlir_module())
  assert f'tensor<{BATCH}x{SIZE}x{SIZE}x3xui8>' in exported.mlir_module()


@pytest.mark.parametrize('devices', [1, 8])
def test_v3_eval_step_exports_for_tpu_and_cuda_with_nothing_cpu_only(devices):
  mesh = step_lib.data_mesh(jax.devices()[:devices])
  steps, state, _, eval_batch, _ = _steps(mesh)
  exported = export_for_accelerators(steps.eval_step, state.params, state.batch_stats, eval_batch)
  assert exported.nr_devices == devices
  assert_shardings_as_given(exported, mesh, state.params, state.batch_stats, eval_batch)
  assert re.search(r'stablehlo\.convolution.*bf16', exported.mlir_module())
  assert f'tensor<{BATCH}x{SIZE}x{SIZE}x3xui8>' in exported.mlir_module()


@pytest.mark.slow
def test_the_per_device_bn_step_exports_too():
  mesh = step_lib.data_mesh(jax.devices()[:8])
  steps, state, batch, _, rng = _steps(mesh, bn_per_device=True)
  exported = export_for_accelerators(steps.train_step, state, batch, rng)
  assert exported.nr_devices == 8
  assert_shardings_as_given(exported, mesh, state, batch, rng)
  assert 'sdy.manual_computation' in exported.mlir_module()


def with_debug_callback(x):
  jax.debug.callback(lambda v: None, x)
  return x * 2


def with_pure_callback(x):
  return jax.pure_callback(lambda v: v, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def with_io_callback(x):
  io_callback(lambda v: None, None, x)
  return x * 2


@pytest.mark.parametrize('step', [with_debug_callback, with_pure_callback, with_io_callback])
def test_the_check_catches_a_step_with_a_host_callback(step):
  x = jax.ShapeDtypeStruct((4,), jnp.float32)
  export_for_accelerators(jax.jit(lambda x: x * 2), x)   # the same step without its callback passes
  # jax 0.10.2 refuses to lower a callback for two platforms: NotImplementedError ("multi-platform lowering
  # for python_callback"), or for debug.callback a TypeError inside that lowering.
  with pytest.raises((NotImplementedError, TypeError)):
    export_for_accelerators(jax.jit(step), x)
  # Lowered for the CPU alone, where it can be, the callback is a custom call the module search names.
  lowered = jax.jit(step).trace(x).lower(lowering_platforms=('cpu',)).as_text()
  assert cpu_only(lowered) == ['xla_ffi_python_cpu_callback'], custom_call_targets(lowered)


def test_the_check_names_a_cpu_library_call():
  # LAPACK's eigensolver, as the CPU lowering of jnp.linalg.eigh calls it.
  exported = jax.export.export(jax.jit(jnp.linalg.eigh), platforms=('cpu',))(jax.ShapeDtypeStruct((4, 4),
                                                                                                 jnp.float32))
  assert cpu_only(exported) and all('lapack' in target for target in cpu_only(exported)), cpu_only(exported)
