"""Input pipelines on tensorflow-datasets and tf.data: sources, Inception preprocessing, batches."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's start-up chatter off the console

import tensorflow as tf  # noqa: E402

# TensorFlow only feeds the input pipeline; the accelerators belong to JAX.
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # already initialised by the caller; nothing to hide then
  pass

from inception_jax.data.pipeline import (SYNTHETIC_CLASSES, SYNTHETIC_EPOCH, EvalBatches,  # noqa: E402
                                         ImageSpec, eval_batches, prefetch_to_devices, synthetic_batches,
                                         train_batches)
from inception_jax.data.preprocess import TrainAugment  # noqa: E402
from inception_jax.data.sources import VALID_SOURCES, Source, create_source  # noqa: E402

__all__ = ['EvalBatches', 'ImageSpec', 'SYNTHETIC_CLASSES', 'SYNTHETIC_EPOCH', 'Source', 'TrainAugment',
           'VALID_SOURCES', 'create_source', 'eval_batches', 'prefetch_to_devices', 'synthetic_batches',
           'train_batches', 'check_num_classes']


def check_num_classes(source: Source, num_classes: int) -> None:
  """One clear error when the model's classifier and the dataset disagree."""
  if num_classes != source.num_classes:
    raise ValueError(f'{source.name} has {source.num_classes} classes but num_classes is {num_classes}; '
                     f'set num_classes={source.num_classes}')
