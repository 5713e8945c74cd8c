"""Top-5 ImageNet classes of images, with converted pretrained weights.

    python -m experiments.classify --weights=weights/v3 cat.jpg dog.png
    python -m experiments.classify --model=v3 --weights=weights/v3 cat.jpg

Images get the model's evaluation preprocessing (central crop, resize, normalisation). Class names are
the WordNet synsets of ILSVRC-2012 that TFDS ships.
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np

from experiments import cli

_WEIGHTS = flags.DEFINE_string('weights', None, 'directory written by experiments.convert')
_MODEL = flags.DEFINE_string('model', None, 'expected model (name or alias); checked against the weights')
_TOP = flags.DEFINE_integer('top', 5, 'how many classes to print per image', lower_bound=1)


def imagenet_class_names() -> list[str]:
  """'n01440764 tench' ... in the standard class order (TFDS' label files)."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.datasets.siscore import labels as readable
  with open(tfds.core.tfds_path('datasets/imagenet2012/labels.txt')) as f:
    synsets = f.read().split()
  return [f'{s} {name.split(",")[0]}' for s, name in zip(synsets, readable.IMAGENET_LABELS_LIST)]


def main(argv: list[str]) -> None:
  images = argv[1:]
  if not _WEIGHTS.value or not images:
    cli.fail('give --weights=DIR (written by experiments.convert) and one or more image files')
  import jax
  import tensorflow as tf

  from inception_jax import convert, data, models
  from inception_jax.data import preprocess

  try:
    pretrained = convert.load(_WEIGHTS.value)
  except (convert.ConversionError, ValueError) as e:
    cli.fail(str(e))
  if _MODEL.value and models.resolve_name(_MODEL.value) != pretrained.model:
    cli.fail(f'--model={_MODEL.value} but {_WEIGHTS.value} holds {pretrained.model}')
  missing = [p for p in images if not os.path.isfile(p)]
  if missing:
    cli.fail(f'no such image: {missing[0]}')
  info = models.model_info(pretrained.model)
  spec = data.ImageSpec.for_model(info)
  model = pretrained.create_model()
  names = imagenet_class_names() if pretrained.num_classes == 1000 else [
      f'class {i}' for i in range(pretrained.num_classes)]
  predict = model.kernels.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).logits))
  for path in images:
    try:
      pixels = preprocess.eval_image(tf.constant(tf.io.read_file(path)), info.input_size, info.crop_pct,
                                     encoded=True)
    except tf.errors.InvalidArgumentError:
      cli.fail(f'{path}: not a readable image (JPEG, PNG, GIF or BMP)')
    probs = np.asarray(predict(pretrained.variables, spec.normalize(pixels.numpy()[None])))[0]
    print(path)
    for i in np.argsort(-probs)[:_TOP.value]:
      print(f'  {probs[i]:7.2%}  {names[i]}')


if __name__ == '__main__':
  cli.run(main)
