"""Images per second of the input pipeline alone (no model).

    python -m experiments.benchmark_input --source=fashion_mnist --size=299 --batch=64
    python -m experiments.benchmark_input --fake_jpegs=300 --size=299     # ImageNet-like 500×375 JPEGs
    python -m experiments.benchmark_input --fake_jpegs=300 --size=299 --reference --rounds=3 --json

With `--reference` (training split of an ImageFolder, e.g. `--fake_jpegs`) a plain tf.data pipeline written
here (read the file, fused decode-and-crop of a random window, resize, flip, normalise, batch, prefetch) is
timed on the same files in the same run, alternating with ours, and our ratio to it is printed, in images/s
and in CPU time per image (the process's, all threads: the steadier figure where others share the machine).
Ours yields uint8 pixels, normalised on the devices by the training loop; the reference float32, normalised
here on the host as the textbook pipelines do.
    python -m experiments.benchmark_input --source=imagefolder:/data/flowers --split=eval
"""

from __future__ import annotations

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import json
import os
import resource
import statistics
import tempfile
import time

from absl import flags
import numpy as np

from experiments import cli
from inception_jax import data

_SOURCE = flags.DEFINE_string('source', 'fashion_mnist', f'one of: {", ".join(data.VALID_SOURCES)}')
_DATA_DIR = flags.DEFINE_string('data_dir', None, "the source's files (default: where it is installed)")
_FAKE_JPEGS = flags.DEFINE_integer('fake_jpegs', 0, 'generate this many 500×375 JPEGs in a temporary '
                                   'ImageFolder and read those', lower_bound=0)
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'eval'], 'which pipeline to time')
_SIZE = flags.DEFINE_integer('size', 299, 'output image size', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch', 64, 'batch size', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 30, 'timed batches', lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 3, 'untimed batches first', lower_bound=0)
_COLOR_DISTORT = flags.DEFINE_bool('color_distort', False, "the training pipeline's photometric distortions")
_REFERENCE = flags.DEFINE_bool('reference', False,
                               'also time a plain tf.data pipeline on the same files, alternating with ours')
_ROUNDS = flags.DEFINE_integer('rounds', 1, 'with --reference: ours/reference pairs timed', lower_bound=1)
_JSON = flags.DEFINE_bool('json', False, 'end with one JSON line')


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


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    cli.fail(f'unexpected argument {argv[1]!r}; the settings are flags (see --help)')
  jpeg_files = _FAKE_JPEGS.value or _SOURCE.value.startswith('imagefolder')
  if _REFERENCE.value and (_SPLIT.value != 'train' or not jpeg_files):
    cli.fail('--reference times the training split of JPEG files: give --fake_jpegs=N or '
             '--source=imagefolder:DIR')
  try:
    spec = data.ImageSpec(_SIZE.value)
    with tempfile.TemporaryDirectory() as tmp:
      source_name = _SOURCE.value
      if _FAKE_JPEGS.value:
        make_fake_jpegs(tmp, _FAKE_JPEGS.value)
        source_name = f'imagefolder:{tmp}'
      if source_name == 'synthetic':
        batches = lambda: data.synthetic_batches(spec, _BATCH.value, 1000)  # noqa: E731
        label = 'synthetic (on device)'
      else:
        source = data.create_source(source_name, _DATA_DIR.value, holdout_fraction=0.1)
        label = f'{source.name} {_SPLIT.value}'
        if _SPLIT.value == 'train':
          batches = lambda: data.train_batches(  # noqa: E731
              source, spec, _BATCH.value, augment=data.TrainAugment(color_distort=_COLOR_DISTORT.value))
        else:
          # Eval makes one pass; cycle it so a small split can still be timed for `steps` batches.
          ev = data.eval_batches(source, spec, _BATCH.value)
          batches = lambda: (b for _ in iter(int, 1) for b in ev)  # noqa: E731
      ours, reference, ours_cpu, reference_cpu = [], [], [], []
      for _ in range(_ROUNDS.value if _REFERENCE.value else 1):
        rate, cpu_ms = measure(batches(), _BATCH.value, _STEPS.value, _WARMUP.value)
        ours.append(rate)
        ours_cpu.append(cpu_ms)
        if _REFERENCE.value:
          root = source_name.partition(':')[2]
          paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                         if f.lower().endswith(('.jpg', '.jpeg')))
          rate, cpu_ms = measure(reference_batches(paths, _SIZE.value, _BATCH.value), _BATCH.value, _STEPS.value,
                                 _WARMUP.value)
          reference.append(rate)
          reference_cpu.append(cpu_ms)
  except ValueError as e:
    cli.fail(e)
  n = cores()
  rate = statistics.median(ours)
  record = {'source': label, 'size': _SIZE.value, 'batch': _BATCH.value, 'cores': n, 'images_per_sec': rate,
            'images_per_sec_per_core': rate / n, 'rounds': ours, 'cpu_ms_per_image': statistics.median(ours_cpu)}
  print(f'{label}: {rate:,.0f} images/s at {_SIZE.value}×{_SIZE.value}, batch {_BATCH.value}, {n} CPU cores '
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
  if _JSON.value:
    print(json.dumps(record))
  return 0


if __name__ == '__main__':
  cli.run(main)
