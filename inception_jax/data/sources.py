"""Where examples come from: ImageNet (TFDS, manual download), Fashion-MNIST (Debian's IDX files, offline),
an ImageFolder directory, any TFDS image-classification dataset by name.

A source yields, per split and per process, a `tf.data.Dataset` of {'image', 'label'} in a fixed order,
images either raw uint8 HWC or encoded bytes (decoded later, JPEG with a fused decode-and-crop).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import logging
import os
import random
import struct
import tarfile
import zlib
from typing import Callable

import numpy as np

from inception_jax.data import import_tensorflow

tf = import_tensorflow()
import tensorflow_datasets as tfds  # noqa: E402  (after TensorFlow is set up)

SPLITS = ('train', 'eval')
FASHION_MNIST_DIRS = ('/usr/share/datasets/fashion-mnist',)
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'eval': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Ankle boot')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
VALID_SOURCES = ('fashion_mnist', 'imagenet2012', 'imagefolder:DIR', 'tfds:NAME (or a TFDS name)',
                 'synthetic')


@dataclasses.dataclass
class Split:
  """One process's shard of a split.

  Attributes:
    dataset: elements {'image': uint8 HWC or encoded bytes, 'label': int64}, in a fixed order.
    num_examples: examples in this shard.
    total_examples: examples in the whole split (all processes).
    encoded: images are encoded bytes rather than pixels.
    load: if set, 'image' holds a reference (a file name) that this turns into the encoded bytes. The
      pipeline calls it in its per-example map, after shuffling: the shuffle buffer then holds names, not
      files, and reading runs in the same parallel stage as decoding.
  """
  dataset: tf.data.Dataset
  num_examples: int
  total_examples: int
  encoded: bool
  load: Callable[[tf.Tensor], tf.Tensor] | None = None

  def image(self, element: dict[str, tf.Tensor]) -> tf.Tensor:
    """The element's image: its pixels or encoded bytes."""
    return element['image'] if self.load is None else self.load(element['image'])


@dataclasses.dataclass
class Source:
  """A named dataset: its classes and a way to read each split's shard."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  split_sizes: dict[str, int]
  read: Callable[[str, int, int], Split] = dataclasses.field(repr=False)  # (split, index, count)

  def split(self, split: str, process_index: int = 0, process_count: int = 1) -> Split:
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; valid: {", ".join(SPLITS)}')
    return self.read(split, process_index, process_count)


def _shard_range(n: int, index: int, count: int) -> tuple[int, int]:
  """Contiguous, near-equal shards: process i gets [start, stop); sizes differ by at most one."""
  return n * index // count, n * (index + 1) // count


def _array_source(name, images, labels, class_names) -> Source:
  """A source over in-memory arrays, {split: (uint8 [N, H, W, C], int [N])}."""

  def read(split, index, count):
    x, y = images[split], labels[split]
    lo, hi = _shard_range(len(x), index, count)
    ds = tf.data.Dataset.from_tensor_slices({'image': x[lo:hi], 'label': y[lo:hi].astype(np.int64)})
    return Split(ds, hi - lo, len(x), encoded=False)

  return Source(name, len(class_names), tuple(class_names), {s: len(images[s]) for s in SPLITS}, read)


# --- Fashion-MNIST --------------------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzipped or not): the MNIST family's format, a magic, dims, then uint8 data."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a cut-off or damaged download, or not gzip
    raise ValueError(f'{path}: not a readable gzip file (truncated or corrupt?): {e}') from None
  if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] != 0x08:
    raise ValueError(f'{path}: not an IDX file of unsigned bytes')
  ndim = raw[3]
  if len(raw) < 4 + 4 * ndim:
    raise ValueError(f'{path}: truncated IDX file (its header is cut off)')
  dims = struct.unpack(f'>{ndim}I', raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f'{path}: truncated IDX file ({data.size} of {int(np.prod(dims))} values)')
  return data.reshape(dims)


def find_fashion_mnist(data_dir: str | None) -> str | None:
  """The first directory holding all four Fashion-MNIST IDX files: `data_dir`, then Debian's location."""
  names = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
  for d in ((data_dir,) if data_dir else ()) + FASHION_MNIST_DIRS:
    for sub in (d, os.path.join(d, 'fashion-mnist'), os.path.join(d, 'fashion_mnist')):
      if all(os.path.exists(os.path.join(sub, n)) for n in names):
        return sub
  return None


def fashion_mnist(data_dir: str | None = None) -> Source:
  """Fashion-MNIST from its original IDX files; TFDS's download when they are absent and the network is up."""
  found = find_fashion_mnist(data_dir)
  if found is None:
    try:
      return tfds_source('fashion_mnist', data_dir)
    except ValueError as e:
      places = ', '.join(((data_dir,) if data_dir else ()) + FASHION_MNIST_DIRS)
      raise ValueError(f'Fashion-MNIST IDX files ({", ".join(FASHION_MNIST_FILES["train"])}, ...) not found '
                       f'in {places}, and TFDS could not provide it ({e}); install Debian\'s '
                       '`dataset-fashion-mnist` package or pass data_dir') from None
  images, labels = {}, {}
  for split, (img, lab) in FASHION_MNIST_FILES.items():
    image_path, label_path = os.path.join(found, img), os.path.join(found, lab)
    x, y = read_idx(image_path), read_idx(label_path)
    if x.ndim != 3 or y.ndim != 1:
      raise ValueError(f'{image_path} and {label_path} should hold images [N, H, W] and labels [N], not '
                       f'arrays of shape {x.shape} and {y.shape}')
    if len(x) != len(y):
      raise ValueError(f'{image_path} holds {len(x)} images but {label_path} {len(y)} labels')
    check_labels(y, len(FASHION_MNIST_CLASSES), f'{label_path} ({split} split)')
    images[split], labels[split] = x[..., None], y
  return _array_source('fashion_mnist', images, labels, FASHION_MNIST_CLASSES)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """Labels outside 0..num_classes-1 are an error where the file is known: past this point they would
  become all-zero one-hot targets, and the run would train on them without a word."""
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise ValueError(f'{where}: {bad.size} label(s) out of range, the first {labels[bad[0]]} at example '
                     f'{bad[0]}; valid labels are 0..{num_classes - 1} ({num_classes} classes)')


# --- ImageFolder ----------------------------------------------------------------------------------------


def _class_files(root: str) -> dict[str, list[str]]:
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  out = {}
  for c in classes:
    files = []
    for dirpath, _, names in os.walk(os.path.join(root, c)):
      files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    out[c] = sorted(files)
  return out


def _readable(path: str) -> bool:
  from PIL import Image  # only ImageFolder needs it
  try:
    with Image.open(path) as im:
      im.verify()
    return True
  except Exception:  # PIL raises many types for bad files; all mean "cannot use it"
    return False


def _decodable_files(files: dict[str, list[tuple[str, int]]], root: str,
                     skip: bool) -> dict[str, list[tuple[str, int]]]:
  """`files` without those that cannot be decoded, which are an error unless `skip`.

  A file that does not decode is usually a broken copy or download, and training quietly on fewer images
  than the folder holds would change the experiment; the error names the first and the count. With `skip`
  they are left out with one warning, for folders scraped from the web where a few bad files are expected.
  """
  paths = [f for split in SPLITS for f, _ in files[split]]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    readable = dict(zip(paths, pool.map(_readable, paths)))
  bad = sorted(f for f, ok in readable.items() if not ok)
  if not bad:
    return files
  if not skip:
    raise ValueError(f'ImageFolder {root!r}: {len(bad)} image file(s) cannot be decoded, the first {bad[0]}; '
                     'replace or remove them, or set skip_corrupt_images=True to train without them')
  logging.warning('ImageFolder %s: skipping %d unreadable image(s), first: %s', root, len(bad), bad[0])
  files = {split: [(f, y) for f, y in files[split] if readable[f]] for split in SPLITS}
  if not files['train']:
    raise ValueError(f'ImageFolder {root!r}: none of its training images can be decoded')
  return files


def image_folder(root: str, holdout_fraction: float = 0.1, seed: int = 0,
                 skip_corrupt_images: bool = False) -> Source:
  """A directory with one sub-folder per class (any depth below it, JPEG/PNG/BMP/GIF, any size).

  If `root` has `train/` and `val/` (or `validation/`, `test/`) sub-folders, those are the splits;
  otherwise `holdout_fraction` of each class (a fixed random choice) is held out for evaluation. A file
  that cannot be decoded is an error naming it, unless `skip_corrupt_images` (then one warning).
  """
  if not os.path.isdir(root):
    raise ValueError(f'ImageFolder directory {root!r} does not exist')
  eval_dir = next((d for d in ('val', 'validation', 'test') if os.path.isdir(os.path.join(root, d))), None)
  if os.path.isdir(os.path.join(root, 'train')) and eval_dir:
    per_split = {'train': _class_files(os.path.join(root, 'train')),
                 'eval': _class_files(os.path.join(root, eval_dir))}
    classes = sorted(per_split['train'])
    if sorted(per_split['eval']) != classes:
      raise ValueError(f'ImageFolder {root!r}: train/ and {eval_dir}/ have different class folders')
    files = {s: [(f, i) for i, c in enumerate(classes) for f in per_split[s][c]] for s in SPLITS}
  else:
    if not 0.0 < holdout_fraction < 1.0:
      raise ValueError(f'holdout_fraction must be in (0, 1), got {holdout_fraction}')
    per_class = _class_files(root)
    classes = sorted(per_class)
    files = {'train': [], 'eval': []}
    rng = random.Random(seed)
    for i, c in enumerate(classes):
      fs = list(per_class[c])
      rng.shuffle(fs)
      n_eval = int(round(len(fs) * holdout_fraction)) if len(fs) > 1 else 0
      files['eval'] += [(f, i) for f in fs[:n_eval]]
      files['train'] += [(f, i) for f in fs[n_eval:]]
  if not classes or not files['train']:
    raise ValueError(f'ImageFolder {root!r} has no images: expected one sub-folder per class holding '
                     f'{"/".join(e[1:] for e in IMAGE_EXTENSIONS)} files')
  files = _decodable_files({s: sorted(files[s]) for s in SPLITS}, root, skip_corrupt_images)

  def read(split, index, count):
    fs = files[split]
    lo, hi = _shard_range(len(fs), index, count)
    paths = [f for f, _ in fs[lo:hi]]
    labels = np.array([y for _, y in fs[lo:hi]], np.int64)
    ds = tf.data.Dataset.from_tensor_slices({'image': tf.constant(paths, tf.string), 'label': labels})
    return Split(ds, hi - lo, len(fs), encoded=True, load=tf.io.read_file)

  return Source(f'imagefolder:{root}', len(classes), tuple(classes), {s: len(files[s]) for s in SPLITS}, read)


# --- TFDS -----------------------------------------------------------------------------------------------


def _prepared_builder(name: str, data_dir: str | None, download_config=None):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises DatasetNotFoundError and friends
    raise ValueError(f'unknown dataset {name!r}; valid sources: {", ".join(VALID_SOURCES)} '
                     f'({type(e).__name__})') from None
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # no network, missing manual files, a damaged archive, ...
      reason = str(e).splitlines()[0] if str(e) else type(e).__name__
      if isinstance(e, (tarfile.TarError, EOFError)):  # TFDS does not say which archive
        where = download_config.manual_dir if download_config and download_config.manual_dir else 'downloads'
        reason = f'an archive in {where} is damaged ({reason}); copy the files there again'
      # TFDS prepares into a temporary folder it removes on failure: the next run starts afresh.
      raise ValueError(f'TFDS dataset {name!r} is not prepared under {builder.data_dir} and could not be '
                       f'prepared: {reason}') from None
  return builder


def tfds_source(name: str, data_dir: str | None = None, download_config=None) -> Source:
  """Any TFDS dataset with 'image' and 'label' features; eval reads 'validation', else 'test'."""
  builder = _prepared_builder(name, data_dir, download_config)
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise ValueError(f'TFDS dataset {name!r} has no image/label features (it has {", ".join(features)})')
  splits = builder.info.splits
  names = {'train': 'train', 'eval': 'validation' if 'validation' in splits else 'test'}
  if 'train' not in splits or names['eval'] not in splits:
    raise ValueError(f'TFDS dataset {name!r} needs a train and a validation or test split; it has '
                     f'{", ".join(splits)}')
  label = features['label']

  def read(split, index, count):
    shard = tfds.even_splits(names[split], n=count, drop_remainder=False)[index]
    ds = builder.as_dataset(split=shard, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})
    return Split(ds, splits[shard].num_examples, splits[names[split]].num_examples, encoded=True)

  return Source(name, label.num_classes, tuple(label.names),
                {s: splits[names[s]].num_examples for s in SPLITS}, read)


def imagenet(data_dir: str | None = None, manual_dir: str | None = None) -> Source:
  """ILSVRC2012 through TFDS `imagenet2012`, prepared once from the tars the user downloaded."""
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  if not builder.is_prepared():
    manual_dir = manual_dir or os.path.join(builder.data_dir_root, 'downloads', 'manual')
    missing = [t for t in IMAGENET_TARS if not os.path.exists(os.path.join(manual_dir, t))]
    if missing:
      raise ValueError(f'ImageNet is not prepared and {manual_dir} lacks {" and ".join(missing)}: download '
                       'the ILSVRC2012 tars into that folder (the first run prepares the dataset from them)')
    for tar in IMAGENET_TARS:
      check_tar(os.path.join(manual_dir, tar))
  return tfds_source('imagenet2012', data_dir,
                     tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None)


def check_tar(path: str) -> None:
  """One clear error for a tar that is cut short (a download or copy that stopped) or not a tar at all,
  before hours of preparation fail on it. Reads the member headers only (seeking past the contents)."""
  try:
    with tarfile.open(path, 'r:') as tar:
      if not tar.getmembers():
        raise tarfile.ReadError('it holds no files')
      # tarfile takes a file cut between two members for a whole one; a whole tar ends in zero blocks.
      tar.fileobj.seek(tar.offset)
      if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise tarfile.ReadError('it stops after a member, without the end-of-archive blocks')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f'{path} is not a whole tar file ({e}): a download or copy cut short? Copy it again '
                     '(its size should be the one the download page gives)') from None


def subset(source: Source, split: str, examples: int) -> Source:
  """`source` with `split` cut to its first `examples` examples (a fixed choice: the same for every seed
  and every run), sharded over processes as the whole split is; the other split is kept.

  A training subset makes a small-budget run see its images several times, so that what a network learns
  of them beyond what holds on the test set (the train-test gap) shows within the budget; an evaluation
  subset makes a smoke run's evaluation short.
  """
  total = source.split_sizes[split]
  key = {'train': 'train_examples', 'eval': 'eval_examples'}[split]
  if isinstance(examples, bool) or not isinstance(examples, int) or not 0 < examples <= total:
    raise ValueError(f'{key} must be an integer in 1..{total} (the {split} split of {source.name}), or 0 '
                     f'for all of it; got {examples!r}')
  if examples == total:
    return source

  def read(part, index, count):
    if part != split:
      return source.read(part, index, count)
    whole = source.read(split, 0, 1)
    lo, hi = _shard_range(examples, index, count)
    return dataclasses.replace(whole, dataset=whole.dataset.take(examples).skip(lo).take(hi - lo),
                               num_examples=hi - lo, total_examples=examples)

  return dataclasses.replace(source, split_sizes={**source.split_sizes, split: examples}, read=read)


def create_source(name: str, data_dir: str | None = None, **options) -> Source:
  """Opens a source by name: 'fashion_mnist', 'imagenet2012' (or 'imagenet'), 'imagefolder:DIR' (or
  'imagefolder' with data_dir), 'tfds:NAME' or a bare TFDS dataset name. ('synthetic' is not a tf.data
  source: training makes its batches on the devices, `device.synthetic_batches`.) Options: `manual_dir` (ImageNet's tars), `holdout_fraction`
  and `skip_corrupt_images` (ImageFolder)."""
  if name == 'fashion_mnist':
    return fashion_mnist(data_dir)
  if name in ('imagenet', 'imagenet2012'):
    return imagenet(data_dir, options.get('manual_dir'))
  if name == 'imagefolder' or name.startswith('imagefolder:'):
    root = name.partition(':')[2] or data_dir
    if not root:
      raise ValueError("imagefolder needs a directory: 'imagefolder:DIR' or data_dir")
    return image_folder(root, options.get('holdout_fraction', 0.1),
                        skip_corrupt_images=options.get('skip_corrupt_images', False))
  if name.startswith('tfds:'):
    name = name[len('tfds:'):]
  if not name or name == 'synthetic' or name not in tfds.list_builders():
    raise ValueError(f'unknown dataset {name!r}; valid sources: {", ".join(VALID_SOURCES)}')
  return tfds_source(name, data_dir)
