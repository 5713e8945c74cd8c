"""Top-5 ImageNet classes of images, with converted pretrained weights.

    python -m experiments.classify --weights=weights/v3 cat.jpg dog.png
    python -m experiments.classify --model=v3 --weights=weights/v3 cat.jpg

Images get the model's evaluation preprocessing (central crop, resize, normalisation). Class names are
the WordNet synsets of ILSVRC-2012 that TFDS ships.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def imagenet_class_names() -> list[str]:
  """'n01440764 tench' ... in the standard class order (TFDS' label files)."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.datasets.siscore import labels as readable
  with open(tfds.core.tfds_path('datasets/imagenet2012/labels.txt')) as f:
    synsets = f.read().split()
  return [f'{s} {name.split(",")[0]}' for s, name in zip(synsets, readable.IMAGENET_LABELS_LIST)]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--weights', required=True, help='directory written by experiments.convert')
  parser.add_argument('--model', help='expected model (name or alias); checked against the weights')
  parser.add_argument('--top', type=int, default=5)
  parser.add_argument('images', nargs='+')
  args = parser.parse_args(argv)

  import jax
  import tensorflow as tf

  from inception_jax import convert, models
  from inception_jax.data import preprocess

  def fail(message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)

  try:
    pretrained = convert.load(args.weights)
  except (convert.ConversionError, ValueError) as e:
    fail(str(e))
  if args.model and models.resolve_name(args.model) != pretrained.model:
    fail(f'--model={args.model} but {args.weights} holds {pretrained.model}')
  missing = [p for p in args.images if not os.path.isfile(p)]
  if missing:
    fail(f'no such image: {missing[0]}')
  info = models.model_info(pretrained.model)
  model = pretrained.create_model()
  names = imagenet_class_names() if pretrained.num_classes == 1000 else [
      f'class {i}' for i in range(pretrained.num_classes)]
  predict = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False).logits))
  for path in args.images:
    try:
      image = preprocess.eval_image(tf.constant(tf.io.read_file(path)), info.input_size, info.mean,
                                    info.std, info.crop_pct, encoded=True)
    except tf.errors.InvalidArgumentError:
      fail(f'{path}: not a readable image (JPEG, PNG, GIF or BMP)')
    probs = np.asarray(predict(pretrained.variables, image.numpy()[None]))[0]
    print(path)
    for i in np.argsort(-probs)[:args.top]:
      print(f'  {probs[i]:7.2%}  {names[i]}')


if __name__ == '__main__':
  main()
