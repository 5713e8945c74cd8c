"""Batches for training and evaluation: tf.data pipelines over a source.

Each process reads its own shard and yields per-process batches of numpy arrays; the training code builds
global arrays from them. Images are uint8 pixels; the steps make the model's input of them on the devices
(`ImageSpec.normalize`). Training streams are infinite, shuffled and augmented deterministically for a
seed, and can start at any step. Evaluation streams cover the split exactly once: the last batch is padded
and a `mask` marks the real examples, and every process yields the same number of batches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import jax

from inception_jax.data import import_tensorflow, preprocess
from inception_jax.data.device import Batch, ImageSpec, check_batch_size
from inception_jax.data.sources import Source

tf = import_tensorflow()


def _options(autotune: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Off, each AUTOTUNE parallelism stays where tf.data starts it and a prefetch buffer grows only when its
  # consumer waits; no tuning thread runs (`data.input_autotune`).
  options.autotune.enabled = autotune
  return options


def train_batches(source: Source, spec: ImageSpec, batch_size: int, *, seed: int = 0, start_step: int = 0,
                  augment: preprocess.TrainAugment = preprocess.TrainAugment(),
                  process_index: int | None = None, process_count: int | None = None,
                  shuffle_buffer: int = 16_384, autotune: bool = True) -> Iterator[Batch]:
  """An endless stream of augmented training batches for this process.

  Args:
    source: where examples come from.
    spec: image size and normalisation.
    batch_size: examples per batch on this process.
    seed: shuffling and augmentation seed; the stream is a function of (seed, process, position).
    start_step: batches to skip, so a resumed run continues where it stopped.
    augment: the random-crop / flip / colour settings.
    process_index, process_count: this process's shard (default: jax's).
    autotune: whether tf.data tunes the pipeline's parallelism and buffers as it runs (the batches are
      the same either way).

  Yields:
    {'image': uint8 [B, S, S, 3], 'label': int32 [B]}.
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
    image = preprocess.train_image(split.image(ex), example_seed, spec.size, augment, split.encoded)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options(autotune))
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


def eval_batches(source: Source, spec: ImageSpec, batch_size: int, *, split: str = 'eval',
                 process_index: int | None = None, process_count: int | None = None,
                 autotune: bool = True) -> EvalBatches:
  """Central-crop evaluation batches {'image', 'label', 'mask'} of `split` ('eval', or 'train' for the
  training images as the evaluation sees them: no augmentation); padded examples have mask False.
  `autotune` as for `train_batches`."""
  check_batch_size(batch_size)
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  shard = source.split(split, index, count)
  # Shards differ by at most one example; all processes step together, so size for the largest.
  num_batches = math.ceil(math.ceil(shard.total_examples / count) / batch_size)
  pad = num_batches * batch_size - shard.num_examples

  def prepare(ex):
    image = preprocess.eval_image(shard.image(ex), spec.size, spec.crop_pct, shard.encoded)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32), 'mask': tf.constant(True)}

  ds = shard.dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([spec.size, spec.size, 3], tf.uint8),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False)}).repeat(pad)
  ds = ds.concatenate(padding).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return EvalBatches(ds.with_options(_options(autotune)), num_batches, shard.num_examples, shard.total_examples)
