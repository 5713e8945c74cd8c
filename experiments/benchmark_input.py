"""Images per second of the input pipeline alone (no model).

    python -m experiments.benchmark_input --source=fashion_mnist --size=299 --batch=64
    python -m experiments.benchmark_input --fake_jpegs=300 --size=299     # ImageNet-like 500×375 JPEGs
    python -m experiments.benchmark_input --source=imagefolder:/data/flowers --split=eval
"""

from __future__ import annotations

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from inception_jax import data


def make_fake_jpegs(root: str, count: int, classes: int = 10, size=(500, 375), seed: int = 0) -> None:
  """Writes `count` smooth-noise JPEGs of ImageNet's typical size into an ImageFolder layout."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  for i in range(count):
    d = os.path.join(root, f'class_{i % classes:02d}')
    os.makedirs(d, exist_ok=True)
    coarse = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.BILINEAR)  # photo-like: compresses to ~20-40 kB
    image.save(os.path.join(d, f'{i:05d}.jpg'), quality=90)


def measure(batches, batch_size: int, steps: int, warmup: int) -> float:
  it = iter(batches)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.benchmark_input',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--source', default='fashion_mnist',
                      help=f'one of: {", ".join(data.VALID_SOURCES)}')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--fake_jpegs', type=int, default=0,
                      help='generate this many 500×375 JPEGs in a temporary ImageFolder and read those')
  parser.add_argument('--split', choices=('train', 'eval'), default='train')
  parser.add_argument('--size', type=int, default=299)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--color_distort', action='store_true')
  args = parser.parse_args(argv)
  try:
    spec = data.ImageSpec(args.size)
    with tempfile.TemporaryDirectory() as tmp:
      source_name = args.source
      if args.fake_jpegs:
        make_fake_jpegs(tmp, args.fake_jpegs)
        source_name = f'imagefolder:{tmp}'
      if source_name == 'synthetic':
        batches = data.synthetic_batches(spec, args.batch, 1000)
        label = 'synthetic (on device)'
      else:
        source = data.create_source(source_name, args.data_dir, holdout_fraction=0.1)
        label = f'{source.name} {args.split}'
        if args.split == 'train':
          batches = data.train_batches(source, spec, args.batch,
                                       augment=data.TrainAugment(color_distort=args.color_distort))
        else:
          # Eval makes one pass; cycle it so a small split can still be timed for `steps` batches.
          ev = data.eval_batches(source, spec, args.batch)
          batches = (b for _ in iter(int, 1) for b in ev)
      rate = measure(batches, args.batch, args.steps, args.warmup)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{label}: {rate:,.0f} images/s at {args.size}×{args.size}, batch {args.batch}, '
        f'{os.cpu_count()} CPU cores')
  print(json.dumps({'source': label, 'size': args.size, 'batch': args.batch, 'images_per_sec': rate}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
