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


# A user's CPU is one device. End-to-end runs of the tools that do not test sharding run there: compiling a
# step for eight simulated devices takes two to three times as long.
ONE_DEVICE = {'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}


def run_module(module, *args, cwd=ROOT, timeout=300, **env):
  command, env = module_command(module, *args, **env)
  return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def write_idx(path, array):
  """Writes a gzipped IDX file, the format of (Fashion-)MNIST's original files."""
  header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


# Synsets of ILSVRC-2012 (TFDS's label order) and the sizes a photo collection has: wide, tall, small,
# one grayscale image per synset (ImageNet has ~20 in each split).
ILSVRC_SYNSETS = ('n01440764', 'n01443537', 'n02099601')
ILSVRC_SIZES = ((500, 375), (375, 500), (120, 90), (333, 333), (640, 427), (64, 80))


def _jpeg(size, gray, seed):
  import io
  from PIL import Image
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (max(1, size[1] // 16), max(1, size[0] // 16), 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize(size, Image.BILINEAR)
  buffer = io.BytesIO()
  (image.convert('L') if gray else image).save(buffer, 'JPEG', quality=85)
  return buffer.getvalue()


def _add(tar, name, payload):
  import io
  import tarfile
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_ilsvrc_tars(manual_dir, per_synset=6, val_images=11):
  """ILSVRC2012_img_train.tar (one tar per synset, `per_synset` JPEGs each, named like the real ones)
  and ILSVRC2012_img_val.tar (ILSVRC2012_val_00000001.JPEG, ...: TFDS labels them from its bundled list
  by name) in `manual_dir`, as a user downloads them. Returns the two paths."""
  import io
  import tarfile
  os.makedirs(manual_dir, exist_ok=True)
  train = os.path.join(manual_dir, 'ILSVRC2012_img_train.tar')
  with tarfile.open(train, 'w') as outer:
    for k, synset in enumerate(ILSVRC_SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as tar:
        for i in range(per_synset):
          _add(tar, f'{synset}_{1000 + i}.JPEG', _jpeg(ILSVRC_SIZES[i % len(ILSVRC_SIZES)], i == 2, 10 * k + i))
      _add(outer, f'{synset}.tar', inner.getvalue())
  val = os.path.join(manual_dir, 'ILSVRC2012_img_val.tar')
  with tarfile.open(val, 'w') as tar:
    for i in range(1, val_images + 1):
      _add(tar, f'ILSVRC2012_val_{i:08d}.JPEG', _jpeg(ILSVRC_SIZES[i % len(ILSVRC_SIZES)], i == 3, 1000 + i))
  return train, val


@pytest.fixture
def fashion_dir(tmp_path):
  """Fashion-MNIST-format IDX files (40 train, 13 test) whose image i is filled with 2*i, label i % 10."""
  from inception_jax.data import sources
  for split, n in (('train', 40), ('eval', 13)):
    images, labels = sources.FASHION_MNIST_FILES[split]
    write_idx(tmp_path / images, np.stack([np.full((28, 28), 2 * i) for i in range(n)]))
    write_idx(tmp_path / labels, np.arange(n) % 10)
  return str(tmp_path)
