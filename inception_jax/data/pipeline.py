"""Batches for training and evaluation: tf.data pipelines over a source, and synthetic device batches.

Each process reads its own shard and yields per-process batches of numpy arrays; the training code builds
global arrays from them. Training streams are infinite, shuffled and augmented deterministically for a
seed, and can start at any step. Evaluation streams cover the split exactly once: the last batch is padded
and a `mask` marks the real examples, and every process yields the same number of batches.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from inception_jax.data import preprocess
from inception_jax.data.sources import Source

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


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return options


def check_batch_size(batch_size: int, what: str = 'batch_size') -> None:
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'{what} must be a positive integer, got {batch_size!r}')


def train_batches(source: Source, spec: ImageSpec, batch_size: int, *, seed: int = 0, start_step: int = 0,
                  augment: preprocess.TrainAugment = preprocess.TrainAugment(),
                  process_index: int | None = None, process_count: int | None = None,
                  shuffle_buffer: int = 16_384) -> Iterator[Batch]:
  """An endless stream of augmented training batches for this process.

  Args:
    source: where examples come from.
    spec: image size and normalisation.
    batch_size: examples per batch on this process.
    seed: shuffling and augmentation seed; the stream is a function of (seed, process, position).
    start_step: batches to skip, so a resumed run continues where it stopped.
    augment: the random-crop / flip / colour settings.
    process_index, process_count: this process's shard (default: jax's).

  Yields:
    {'image': float32 [B, S, S, 3], 'label': int32 [B]}.
  """
  check_batch_size(batch_size)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  split = source.split('train', index, count)
  if split.num_examples == 0:
    raise ValueError(f'{source.name}: process {index} of {count} has no training examples')
  process_seed = seed * 1_000_003 + index
  ds = split.dataset.shuffle(min(shuffle_buffer, split.num_examples), seed=process_seed,
                             reshuffle_each_iteration=True).repeat()
  # Positions number the stream so each example's augmentation seed is (seed, position): the same images
  # for any thread count, and skipping before decoding makes resuming cheap.
  ds = ds.enumerate().skip(start_step * batch_size)

  def prepare(position, ex):
    example_seed = tf.stack([tf.constant(process_seed, tf.int64), position])
    image = preprocess.train_image(split.image(ex), example_seed, spec.size, spec.mean, spec.std, augment,
                                   split.encoded)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options())
  return ds.as_numpy_iterator()


@dataclasses.dataclass
class EvalBatches:
  """One pass over this process's shard of the eval split, padded to `num_batches` full batches.

  Attributes:
    num_batches: batches every process yields (the same on all of them).
    num_examples: real examples in this process's shard (sum of the masks).
    total_examples: real examples in the whole split.
  """
  dataset: tf.data.Dataset = dataclasses.field(repr=False)
  num_batches: int
  num_examples: int
  total_examples: int

  def __iter__(self) -> Iterator[Batch]:
    return self.dataset.as_numpy_iterator()

  def __len__(self) -> int:
    return self.num_batches


def eval_batches(source: Source, spec: ImageSpec, batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None) -> EvalBatches:
  """Central-crop evaluation batches {'image', 'label', 'mask'}; padded examples have mask False."""
  check_batch_size(batch_size)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  split = source.split('eval', index, count)
  # Shards differ by at most one example; all processes step together, so size for the largest.
  num_batches = math.ceil(math.ceil(split.total_examples / count) / batch_size)
  pad = num_batches * batch_size - split.num_examples

  def prepare(ex):
    image = preprocess.eval_image(split.image(ex), spec.size, spec.mean, spec.std, spec.crop_pct, split.encoded)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32), 'mask': tf.constant(True)}

  ds = split.dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([spec.size, spec.size, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False)}).repeat(pad)
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return EvalBatches(ds.with_options(_options()), num_batches, split.num_examples, split.total_examples)


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
