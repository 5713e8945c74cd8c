"""Test-wide settings.

Eight simulated CPU devices let sharding tests run on any machine. Real forward/backward passes compile
with most XLA optimizations off, as flax's example tests do: compile time, not run time, dominates tests
on tiny inputs, and the results are the same programs' results.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# The command-line tools keep compiled programs in this cache; the suite's runs share one of their own
# (a resumed run then loads its programs, as a user's does), never the user's.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='inception_jax-test-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Keras (a peer library in the weight-import tests) runs on JAX; it reads this when first imported.
os.environ.setdefault('KERAS_BACKEND', 'jax')
# timm imports torch._dynamo, which imports triton (GPU kernels) if it is installed; triton's compiled module
# crashes the process when TensorFlow was loaded first. torch runs without it on the CPU.
import sys  # noqa: E402
sys.modules.setdefault('triton', None)

import jax  # noqa: E402  (after XLA_FLAGS)

jax.config.update('jax_disable_most_optimizations', True)


import gzip  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tiny_config import tiny_config  # noqa: E402,F401  (shared by the test modules)


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: left out of the quick tier (`bash scripts/test.sh --quick`)')


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_command(module, *args, **env):
  """`python -m module args` as a user would run it, and its environment: the child compiles like the
  rest of the suite (most XLA optimisations off) and sees the same eight simulated devices unless `env`
  says otherwise."""
  return [sys.executable, '-m', module, *args], dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='true', **env)


def run_module(module, *args, cwd=ROOT, timeout=300, **env):
  command, env = module_command(module, *args, **env)
  return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def write_idx(path, array):
  """Writes a gzipped IDX file, the format of (Fashion-)MNIST's original files."""
  header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path):
  """Fashion-MNIST-format IDX files (40 train, 13 test) whose image i is filled with 2*i, label i % 10."""
  from inception_jax.data import sources
  for split, n in (('train', 40), ('eval', 13)):
    images, labels = sources.FASHION_MNIST_FILES[split]
    write_idx(tmp_path / images, np.stack([np.full((28, 28), 2 * i) for i in range(n)]))
    write_idx(tmp_path / labels, np.arange(n) % 10)
  return str(tmp_path)
