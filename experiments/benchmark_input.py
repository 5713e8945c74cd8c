"""Images per second of the input pipeline alone (no model).

    python -m experiments.benchmark_input --source=fashion_mnist --size=299 --batch=64
    python -m experiments.benchmark_input --fake_jpegs=300 --size=299     # ImageNet-like 500×375 JPEGs
    python -m experiments.benchmark_input --fake_jpegs=300 --size=299 --reference --rounds=3 --json

With `--reference` (training split of an ImageFolder, e.g. `--fake_jpegs`) a plain tf.data pipeline written
here (read the file, fused decode-and-crop of a random window, resize, flip, normalise, batch, prefetch) is
timed on the same files in the same run, alternating with ours, and our ratio to it is printed, in images/s
and in CPU time per image (the process's, all threads: the steadier figure where others share the machine).
    python -m experiments.benchmark_input --source=imagefolder:/data/flowers --split=eval
"""

from __future__ import annotations

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import argparse
import json
import os
import resource
import statistics
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


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)   # all of this process's threads
  return usage.ru_utime + usage.ru_stime


def measure(batches, batch_size: int, steps: int, warmup: int) -> tuple[float, float]:
  """Images per second, and this process's CPU milliseconds per image (all threads) over the same steps:
  on a machine others share, the CPU cost is the steadier of the two."""
  it = iter(batches)
  for _ in range(warmup):
    next(it)
  start, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    next(it)
  images = steps * batch_size
  return images / (time.perf_counter() - start), (_cpu_seconds() - cpu) * 1000 / images


def reference_batches(paths: list[str], size: int, batch: int, seed: int = 0):
  """The textbook ImageNet training input in tf.data, to measure ours against: shuffled files, a random
  window of 8–100% of the area (aspect 3/4–4/3) decoded with the fused decode_and_crop_jpeg, bilinear
  resize, random flip, scaling to [-1, 1], batched and prefetched, all with AUTOTUNE parallelism."""
  import tensorflow as tf

  def prepare(path):
    raw = tf.io.read_file(path)
    shape = tf.io.extract_jpeg_shape(raw)
    begin, window, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(window)
    image = tf.image.decode_and_crop_jpeg(raw, tf.stack([y, x, h, w]), channels=3)
    image = tf.image.resize(image, [size, size], method='bilinear')
    image = tf.image.random_flip_left_right(image)
    return image / 127.5 - 1.0

  ds = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths), seed=seed).repeat()
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


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
  parser.add_argument('--reference', action='store_true',
                      help='also time a plain tf.data pipeline on the same files, alternating with ours')
  parser.add_argument('--rounds', type=int, default=1, help='with --reference: ours/reference pairs timed')
  parser.add_argument('--json', action='store_true', help='end with one JSON line')
  args = parser.parse_args(argv)
  if args.reference and (args.split != 'train' or not (args.fake_jpegs or args.source.startswith('imagefolder'))):
    print('error: --reference times the training split of JPEG files: give --fake_jpegs=N or '
          '--source=imagefolder:DIR', file=sys.stderr)
    return 2
  try:
    spec = data.ImageSpec(args.size)
    with tempfile.TemporaryDirectory() as tmp:
      source_name = args.source
      if args.fake_jpegs:
        make_fake_jpegs(tmp, args.fake_jpegs)
        source_name = f'imagefolder:{tmp}'
      if source_name == 'synthetic':
        batches = lambda: data.synthetic_batches(spec, args.batch, 1000)  # noqa: E731
        label = 'synthetic (on device)'
      else:
        source = data.create_source(source_name, args.data_dir, holdout_fraction=0.1)
        label = f'{source.name} {args.split}'
        if args.split == 'train':
          batches = lambda: data.train_batches(  # noqa: E731
              source, spec, args.batch, augment=data.TrainAugment(color_distort=args.color_distort))
        else:
          # Eval makes one pass; cycle it so a small split can still be timed for `steps` batches.
          ev = data.eval_batches(source, spec, args.batch)
          batches = lambda: (b for _ in iter(int, 1) for b in ev)  # noqa: E731
      ours, reference, ours_cpu, reference_cpu = [], [], [], []
      for _ in range(args.rounds if args.reference else 1):
        rate, cpu_ms = measure(batches(), args.batch, args.steps, args.warmup)
        ours.append(rate)
        ours_cpu.append(cpu_ms)
        if args.reference:
          root = source_name.partition(':')[2]
          paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                         if f.lower().endswith(('.jpg', '.jpeg')))
          rate, cpu_ms = measure(reference_batches(paths, args.size, args.batch), args.batch, args.steps,
                                 args.warmup)
          reference.append(rate)
          reference_cpu.append(cpu_ms)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  n = cores()
  rate = statistics.median(ours)
  record = {'source': label, 'size': args.size, 'batch': args.batch, 'cores': n, 'images_per_sec': rate,
            'images_per_sec_per_core': rate / n, 'rounds': ours, 'cpu_ms_per_image': statistics.median(ours_cpu)}
  print(f'{label}: {rate:,.0f} images/s at {args.size}×{args.size}, batch {args.batch}, {n} CPU cores '
        f'({rate / n:,.0f} per core; {record["cpu_ms_per_image"]:.2f} CPU ms per image)')
  if reference:
    ref = statistics.median(reference)
    ratios = [a / b for a, b in zip(ours, reference)]
    record.update(reference_images_per_sec=ref, reference_images_per_sec_per_core=ref / n,
                  reference_rounds=reference, ratio_to_reference=statistics.median(ratios), ratios=ratios,
                  reference_cpu_ms_per_image=statistics.median(reference_cpu))
    # CPU time per image is what a busy machine disturbs least: the reference's over ours, as a rate ratio.
    record['cpu_ratio_to_reference'] = record['reference_cpu_ms_per_image'] / record['cpu_ms_per_image']
    print(f'plain tf.data reference: {ref:,.0f} images/s ({ref / n:,.0f} per core; '
          f'{record["reference_cpu_ms_per_image"]:.2f} CPU ms per image); ours / reference: '
          f'{record["ratio_to_reference"]:.2f}× (median of {len(ratios)} alternating pairs: '
          f'{", ".join(f"{r:.2f}" for r in ratios)}), {record["cpu_ratio_to_reference"]:.2f}× in CPU time')
  if args.json:
    print(json.dumps(record))
  return 0


if __name__ == '__main__':
  sys.exit(main())
