"""What reaches the devices: how images are specified, batches put on the devices ahead of the step,
synthetic batches made on the devices, and whether the host's input pipeline tunes itself (which depends
on where the step runs).

Nothing here needs TensorFlow, so a host without it (an accelerator image with JAX alone) can run the
training loop and the benchmarks on synthetic data.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How images reach the model: square size, normalisation, evaluation crop."""
  size: int
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  crop_pct: float = 0.875

  @classmethod
  def for_model(cls, info, size: int | None = None, crop_pct: float | None = None) -> 'ImageSpec':
    """From `models.model_info(name)`; a size below the model's minimum is one clear error."""
    size = size or info.input_size
    if size < info.min_input_size:
      raise ValueError(f'image size {size} is below the minimum {info.min_input_size} of {info.name}')
    return cls(size, tuple(info.mean), tuple(info.std), info.crop_pct if crop_pct is None else crop_pct)

  def normalize(self, pixels: jax.Array) -> jax.Array:
    """uint8 pixels (what the input pipelines yield) to the model's float32 input, ((x/255 - mean) / std),
    computed where `pixels` are: inside the train and eval steps, one pass (as x / (255·std) - mean/std)."""
    scale = np.float32(255.0) * np.asarray(self.std, np.float32)
    offset = np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
    return jnp.asarray(pixels).astype(jnp.float32) / scale - offset


def check_batch_size(batch_size: int, what: str = 'batch_size') -> None:
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'{what} must be a positive integer, got {batch_size!r}')


# `dataset='synthetic'` stands in for ImageNet: its classes, and its training split's size as the epoch
# (so presets given in epochs resolve to the paper's step counts).
SYNTHETIC_CLASSES = 1000
SYNTHETIC_EPOCH = 1_281_167


def prefetch_to_devices(batches: Iterator[Batch], put: Callable[[Batch], Any], size: int = 2) -> Iterator[Any]:
  """`put(batch)` for each batch, `size` batches ahead of the consumer, as flax's `prefetch_to_device`
  does for pmap: `put` (e.g. `jax.make_array_from_process_local_data`) starts an asynchronous copy to the
  devices, so the copy of the next batches overlaps the step running on the current one. The order and
  the contents are those of `batches`."""
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(put(batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)


INPUT_AUTOTUNE = ('auto', 'on', 'off')


def input_autotune(setting: str) -> bool:
  """Whether tf.data tunes the input pipelines as they run (the config's `input_autotune`).

  'auto' is off on the CPU backend and on elsewhere. On the CPU the pipeline shares the cores with the
  step, tuning did not make the step faster, and its thread has held up the end of runs (docs/performance.md,
  "tf.data's tuning beside a CPU step"); beside an accelerator the host's cores are the pipeline's, which
  tuning is for. The batches are the same either way.
  """
  if setting not in INPUT_AUTOTUNE:
    raise ValueError(f'input_autotune must be one of {", ".join(map(repr, INPUT_AUTOTUNE))}, got {setting!r}')
  return jax.default_backend() != 'cpu' if setting == 'auto' else setting == 'on'


def synthetic_batches(spec: ImageSpec, batch_size: int, num_classes: int, *, seed: int = 0,
                      sharding: jax.sharding.Sharding | None = None) -> Iterator[dict[str, jax.Array]]:
  """The same random batch over and over, made once on the device(s): input cost zero, for throughput.

  With `sharding`, `batch_size` is the global batch and the arrays are created already sharded.
  """
  check_batch_size(batch_size)
  key_image, key_label = jax.random.split(jax.random.key(seed))

  def make():
    image = jax.random.uniform(key_image, (batch_size, spec.size, spec.size, 3), jnp.float32, -1.0, 1.0)
    label = jax.random.randint(key_label, (batch_size,), 0, num_classes, jnp.int32)
    return {'image': image, 'label': label}

  batch = jax.jit(make, out_shardings=sharding)() if sharding is not None else jax.jit(make)()
  while True:
    yield batch
