"""Input pipelines on tensorflow-datasets and tf.data: sources, Inception preprocessing, batches.

The synthetic source and what puts batches on the devices (`data.device`) need no TensorFlow; the rest
is imported on first use, so the training loop and the benchmarks run on synthetic data on a host that
has JAX and no TensorFlow (an accelerator image, say).
"""

import importlib
import os

from inception_jax.data.device import (INPUT_AUTOTUNE, SYNTHETIC_CLASSES, SYNTHETIC_EPOCH, ImageSpec,
                                       input_autotune, prefetch_to_devices, synthetic_batches)

# Name -> the module that defines it, for the parts that need TensorFlow.
_ON_TENSORFLOW = {
    'EvalBatches': 'pipeline', 'eval_batches': 'pipeline', 'train_batches': 'pipeline',
    'TrainAugment': 'preprocess',
    'Source': 'sources', 'VALID_SOURCES': 'sources', 'create_source': 'sources', 'subset': 'sources',
}

__all__ = ['EvalBatches', 'INPUT_AUTOTUNE', 'ImageSpec', 'SYNTHETIC_CLASSES', 'SYNTHETIC_EPOCH', 'Source',
           'TrainAugment', 'VALID_SOURCES', 'create_source', 'eval_batches', 'input_autotune',
           'prefetch_to_devices', 'synthetic_batches', 'train_batches', 'subset', 'check_num_classes']


def import_tensorflow():
  """TensorFlow, for the modules of the input pipeline, with the GPUs hidden from it: it only feeds the
  input, the accelerators belong to JAX."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's start-up chatter off the console
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # already initialised by the caller; nothing to hide then
    pass
  return tf


def __getattr__(name):
  if name not in _ON_TENSORFLOW:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_ON_TENSORFLOW[name]}'), name)
  globals()[name] = value
  return value


def check_num_classes(source, num_classes: int) -> None:
  """One clear error when the model's classifier and the dataset disagree."""
  if num_classes != source.num_classes:
    raise ValueError(f'{source.name} has {source.num_classes} classes but num_classes is {num_classes}; '
                     f'set num_classes={source.num_classes}')
