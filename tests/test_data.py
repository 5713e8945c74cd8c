"""Input pipelines: every source on tiny data made here (no network), preprocessing, exact evaluation,
per-process sharding, determinism and resuming."""

import gzip
import logging
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from inception_jax import data, models
from inception_jax.data import preprocess, sources

from conftest import write_idx

SPEC = data.ImageSpec(size=32, crop_pct=1.0)
WHOLE = preprocess.TrainAugment(area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0), flip=False)


def identities(images):
  """Recovers the example ids of constant images (pixel value 2*i)."""
  return np.round(images[:, 0, 0, 0] / 2).astype(int).tolist()


def write_image(path, size, mode='RGB', fmt=None, value=None):
  rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
  shape = (size[1], size[0]) + ((len(mode),) if mode != 'L' else ())
  pixels = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
  Image.fromarray(pixels, mode).save(path, fmt)


# --- sources --------------------------------------------------------------------------------------------


def test_fashion_mnist_reads_idx_files_from_data_dir(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  assert (src.num_classes, src.split_sizes) == (10, {'train': 40, 'eval': 13})
  assert src.class_names[0] == 'T-shirt/top' and src.class_names[9] == 'Ankle boot'


def test_truncated_idx_file_is_a_clear_error(tmp_path):
  path = tmp_path / 'x.gz'
  write_idx(path, np.zeros((4, 28, 28)))
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(raw[:-100])
  with pytest.raises(ValueError, match='truncated IDX file'):
    sources.read_idx(str(path))
  path.write_bytes(path.read_bytes()[:-20])  # a download cut off inside the compressed stream
  with pytest.raises(ValueError, match='not a readable gzip file'):
    sources.read_idx(str(path))


def test_fashion_mnist_labels_outside_its_classes_are_named_with_file_and_split(fashion_dir):
  labels = os.path.join(fashion_dir, sources.FASHION_MNIST_FILES['eval'][1])
  write_idx(labels, np.array([0, 1, 12] + [3] * 9 + [255]))
  with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte\.gz \(eval split\): 2 label\(s\) out of range, '
                                       r'the first 12 at example 2; valid labels are 0\.\.9 \(10 classes\)'):
    data.create_source('fashion_mnist', fashion_dir)


def test_fashion_mnist_images_and_labels_must_agree(fashion_dir):
  write_idx(os.path.join(fashion_dir, sources.FASHION_MNIST_FILES['eval'][1]), np.arange(12) % 10)
  with pytest.raises(ValueError, match=r't10k-images-idx3-ubyte\.gz holds 13 images but .* 12 labels'):
    data.create_source('fashion_mnist', fashion_dir)


def make_folder(root, classes=('cat', 'dog', 'emu'), per_class=5):
  for c in classes:
    os.makedirs(root / c / 'nested', exist_ok=True)
    for i in range(per_class):
      kind = i % 4
      if kind == 0:
        write_image(root / c / f'{i}.jpg', (50 + 7 * i, 37), 'RGB')
      elif kind == 1:
        write_image(root / c / f'{i}.png', (41, 60), 'L')
      elif kind == 2:
        write_image(root / c / 'nested' / f'{i}.PNG', (33, 33), 'RGBA')
      else:
        write_image(root / c / f'{i}.jpeg', (64, 48), 'RGB')
  (root / classes[0] / 'notes.txt').write_text('not an image')


def test_image_folder_with_held_out_fraction(tmp_path):
  make_folder(tmp_path)
  src = data.create_source(f'imagefolder:{tmp_path}', holdout_fraction=0.2)
  assert src.class_names == ('cat', 'dog', 'emu')
  assert src.split_sizes == {'train': 12, 'eval': 3}
  batch = next(data.train_batches(src, SPEC, 4, seed=0))
  assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8  # normalised on device
  model_input = np.asarray(SPEC.normalize(batch['image']))
  assert model_input.dtype == np.float32 and -1.0 <= model_input.min() < model_input.max() <= 1.0
  ev = data.eval_batches(src, SPEC, 2)
  assert sum(int(b['mask'].sum()) for b in ev) == 3


def test_image_folder_streams_file_names_and_reads_each_file_after_shuffling(tmp_path):
  # The shuffle buffer then holds names rather than whole files, and reading runs in the parallel
  # decoding stage, as in a plain tf.data ImageNet pipeline.
  make_folder(tmp_path)
  split = data.create_source(f'imagefolder:{tmp_path}').split('train')
  elements = list(split.dataset)
  assert all(e['image'].numpy().decode().startswith(str(tmp_path)) for e in elements)
  headers = {bytes(split.image(e).numpy()[:4]) for e in elements}
  assert headers == {b'\xff\xd8\xff\xe0', b'\x89PNG'}  # JPEG (JFIF) and PNG files, read whole


def test_image_folder_with_explicit_train_and_val_folders(tmp_path):
  make_folder(tmp_path / 'train', per_class=3)
  make_folder(tmp_path / 'val', per_class=2)
  src = data.create_source('imagefolder', str(tmp_path))
  assert src.split_sizes == {'train': 9, 'eval': 6}
  labels = sorted(int(y) for b in data.eval_batches(src, SPEC, 4) for y, m in zip(b['label'], b['mask']) if m)
  assert labels == [0, 0, 1, 1, 2, 2]


def test_corrupt_image_is_an_error_naming_it_unless_skipping_is_asked_for(tmp_path, caplog):
  make_folder(tmp_path, per_class=4)
  (tmp_path / 'dog' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a jpeg')
  with pytest.raises(ValueError, match=r'1 image file\(s\) cannot be decoded, the first .*dog/broken\.jpg; '
                                       r'.*skip_corrupt_images=True'):
    data.create_source(f'imagefolder:{tmp_path}', holdout_fraction=0.25)
  # Asked to, the source leaves it out, says so once, and training goes on.
  with caplog.at_level(logging.WARNING):
    src = data.create_source(f'imagefolder:{tmp_path}', holdout_fraction=0.25, skip_corrupt_images=True)
  warnings = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  assert len(warnings) == 1 and 'skipping 1 unreadable' in warnings[0] and 'broken.jpg' in warnings[0]
  assert sum(src.split_sizes.values()) == 12
  for _, batch in zip(range(4), data.train_batches(src, SPEC, 3)):
    assert batch['image'].shape == (3, 32, 32, 3) and batch['image'].any()


@pytest.mark.parametrize('make,message', [
    (lambda root: None, 'does not exist'),
    (lambda root: os.makedirs(root), 'has no images'),
    (lambda root: os.makedirs(root / 'empty_class'), 'has no images'),
])
def test_missing_or_empty_image_folder_is_one_clear_error(tmp_path, make, message):
  root = tmp_path / 'images'
  make(root)
  with pytest.raises(ValueError, match=message):
    data.create_source(f'imagefolder:{root}')


class TinyShapes(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset prepared locally, standing in for any TFDS image-classification dataset."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(names=['circle', 'square', 'star'])}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(12), 'test': self._generate_examples(7)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((24, 36, 3), 2 * i, np.uint8), 'label': i % 3}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  TinyShapes(data_dir=d).download_and_prepare()
  return d


def test_any_tfds_dataset_by_name(tfds_dir):
  for name in ('tiny_shapes', 'tfds:tiny_shapes'):
    src = data.create_source(name, tfds_dir)
    assert (src.num_classes, src.split_sizes) == (3, {'train': 12, 'eval': 7})
  ev = data.eval_batches(src, SPEC, 3)
  images = np.concatenate([b['image'][b['mask']] for b in ev])
  assert sorted(identities(images)) == list(range(7))  # the test split, each image once, JPEG/PNG-decoded


def test_unknown_dataset_lists_the_valid_sources():
  with pytest.raises(ValueError, match='unknown dataset .no_such_set.*fashion_mnist.*imagenet2012.*imagefolder'):
    data.create_source('no_such_set')


def test_missing_imagenet_files_are_named(tmp_path):
  with pytest.raises(ValueError) as e:
    data.create_source('imagenet2012', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual'))
  msg = str(e.value)
  assert 'ILSVRC2012_img_train.tar' in msg and 'ILSVRC2012_img_val.tar' in msg and 'manual' in msg
  assert '\n' not in msg


def test_num_classes_mismatch_is_one_clear_error(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  data.check_num_classes(src, 10)
  with pytest.raises(ValueError, match='has 10 classes but num_classes is 1000; set num_classes=10'):
    data.check_num_classes(src, 1000)


def test_image_size_below_the_model_minimum_is_rejected():
  with pytest.raises(ValueError, match='image size 60 is below the minimum 75 of inception_v3'):
    data.ImageSpec.for_model(models.model_info('v3'), size=60)
  assert data.ImageSpec.for_model(models.model_info('v3')).size == 299


# --- preprocessing --------------------------------------------------------------------------------------


def test_train_crops_cover_the_papers_area_and_aspect_ranges():
  augment = preprocess.TrainAugment()
  areas, aspects = [], []
  for i in range(200):
    offset, size = preprocess.distorted_crop_window(tf.constant([375, 500]), tf.constant([0, i]), augment)
    h, w = size.numpy()
    areas.append(h * w / (375 * 500))
    aspects.append(w / h)
  assert 0.08 - 0.01 <= min(areas) and max(areas) <= 1.0 and max(areas) - min(areas) > 0.5
  assert 3 / 4 - 0.02 <= min(aspects) and max(aspects) <= 4 / 3 + 0.02


def test_fused_jpeg_decode_and_crop_matches_decode_then_crop():
  pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  jpeg = tf.io.encode_jpeg(pixels, quality=95)
  decoded = tf.io.decode_jpeg(jpeg)
  seed = tf.constant([3, 4], tf.int64)
  aug = preprocess.TrainAugment()
  fused = preprocess.train_image(jpeg, seed, 32, aug, encoded=True).numpy().astype(int)
  plain = preprocess.train_image(decoded, seed, 32, aug, encoded=False).numpy().astype(int)
  # libjpeg's chroma upsampling sees no neighbours beyond the window, so crop-edge pixels may differ a bit.
  assert (fused == plain).mean() > 0.9 and np.abs(fused - plain).mean() < 1.3


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_the_fast_preprocessing_gives_the_straightforward_formulas_numbers(tmp_path, fmt):
  # Written plainly: decode, crop, resize, flip, clip, round to pixels. The pipeline skips the clip (a no-op
  # after a bilinear resize of uint8) and decodes JPEG's window alone: the same pixels.
  write_image(tmp_path / 'x', (90, 70), fmt=fmt)
  encoded = tf.io.read_file(str(tmp_path / 'x'))
  seed, aug, size = tf.constant([3, 4], tf.int64), preprocess.TrainAugment(), 40
  crop_seed, flip_seed, _ = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  offset, window = preprocess.distorted_crop_window(tf.constant([70, 90]), crop_seed, aug)
  decoded = tf.io.decode_image(encoded, channels=3)
  image = tf.slice(decoded, tf.concat([offset, [0]], 0), tf.concat([window, [-1]], 0))
  image = tf.image.stateless_random_flip_left_right(tf.image.resize(image, [size, size]), flip_seed)
  expected = np.round(np.clip(image.numpy(), 0, 255)).astype(np.uint8)
  ours = preprocess.train_image(encoded, seed, size, aug, encoded=True).numpy()
  assert ours.dtype == np.uint8
  if fmt == 'PNG':
    np.testing.assert_array_equal(ours, expected)
  else:   # the fused decode-and-crop upsamples chroma without the window's neighbours
    assert (ours == expected).mean() > 0.9
  # A batch's shape is static: the tf.cond between JPEG and other decoders keeps the channel count.
  traced = tf.function(lambda e: preprocess.train_image(e, seed, size, aug, encoded=True))
  assert traced.get_concrete_function(tf.TensorSpec([], tf.string)).output_shapes == (size, size, 3)


@pytest.mark.parametrize('mean, std', [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_normalisation_on_the_device_is_the_formulas(mean, std):
  # ((x / 255) - mean) / std per channel, within float rounding (XLA may multiply by reciprocals).
  pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  expected = (pixels.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
  ours = np.asarray(jax.jit(data.ImageSpec(7, mean, std).normalize)(pixels))
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_eval_is_a_central_crop():
  pixels = np.zeros((8, 12, 1), np.uint8)
  pixels[2:6, 4:8] = 255  # the central 4×4 square of an 8×12 grayscale image
  out = preprocess.eval_image(tf.constant(pixels), 4, 0.5, encoded=False).numpy()
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, 255)
  full = preprocess.eval_image(tf.constant(pixels), 8, 1.0, encoded=False).numpy()
  assert full.min() == 0 and full.max() == 255
  np.testing.assert_array_equal(data.ImageSpec(8).normalize(full)[2:6, 2:6], 1.0)   # Inception's [-1, 1]


def test_small_grayscale_images_are_resized_up_and_tiled_to_rgb(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  spec = data.ImageSpec(size=75)
  batch = next(iter(data.eval_batches(src, spec, 4)))
  assert batch['image'].shape == (4, 75, 75, 3)
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])


# --- exact evaluation, sharding, determinism ------------------------------------------------------------


def test_eval_counts_every_example_exactly_once_with_a_ragged_last_batch(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  ev = data.eval_batches(src, SPEC, 5)  # 13 examples: 5 + 5 + 3 real, 2 padded
  batches = list(ev)
  assert len(batches) == len(ev) == 3
  assert [int(b['mask'].sum()) for b in batches] == [5, 5, 3]
  ids = [i for b in batches for i in identities(b['image'][b['mask']])]
  assert sorted(ids) == list(range(13))


def test_two_processes_see_disjoint_shards_that_cover_the_split(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  shards = [data.eval_batches(src, SPEC, 4, process_index=i, process_count=2) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 2  # same step count on every process
  ids = [set(i for b in ev for i in identities(b['image'][b['mask']])) for ev in shards]
  assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(13))
  train_ids = []
  for i in range(2):
    it = data.train_batches(src, SPEC, 4, augment=WHOLE, process_index=i, process_count=2)
    train_ids.append(set(x for _, b in zip(range(5), it) for x in identities(b['image'])))  # one epoch
  assert not train_ids[0] & train_ids[1] and train_ids[0] | train_ids[1] == set(range(40))


def test_train_stream_is_deterministic_for_a_seed_and_resumes_at_a_step(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)

  def take(n, **kw):
    it = data.train_batches(src, SPEC, 8, **kw)
    return [next(it) for _ in range(n)]

  run = take(12, seed=3)  # more than two epochs
  again = take(12, seed=3)
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  other = take(12, seed=4)
  assert any(not np.array_equal(a['image'], b['image']) for a, b in zip(run, other))
  resumed = take(5, seed=3, start_step=7)
  for a, b in zip(run[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_autotuning_changes_the_pipelines_speed_not_their_batches(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  tuned, fixed = (data.train_batches(src, SPEC, 8, seed=5, autotune=a) for a in (True, False))
  for _ in range(6):  # more than an epoch of the 40 images
    a, b = next(tuned), next(fixed)
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  for a, b in zip(*(data.eval_batches(src, SPEC, 8, autotune=a) for a in (True, False)), strict=True):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(a[key], b[key])


def test_input_autotune_is_off_on_the_cpu_backend_unless_asked_for():
  assert jax.default_backend() == 'cpu'
  assert data.input_autotune('auto') is False
  assert data.input_autotune('on') is True and data.input_autotune('off') is False
  with pytest.raises(ValueError, match="input_autotune must be one of 'auto', 'on', 'off', got 'yes'"):
    data.input_autotune('yes')


def test_train_epochs_are_reshuffled(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  it = data.train_batches(src, SPEC, 40, augment=WHOLE, seed=0)
  first, second = identities(next(it)['image']), identities(next(it)['image'])
  assert sorted(first) == sorted(second) == list(range(40)) and first != second


def test_synthetic_batches_are_fixed_and_can_be_sharded():
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  it = data.synthetic_batches(SPEC, 16, 10, sharding=sharding)
  a, b = next(it), next(it)
  assert a['image'] is b['image'] and a['image'].shape == (16, 32, 32, 3)
  assert a['image'].sharding == sharding and int(a['label'].max()) < 10


def test_prefetch_puts_batches_on_the_devices_ahead_in_order():
  pulled = []

  def batches():
    for i in range(5):
      pulled.append(i)
      yield {'x': np.full((8, 2), i, np.float32)}

  sharding = jax.sharding.NamedSharding(jax.make_mesh((jax.device_count(),), ('data',)),
                                        jax.sharding.PartitionSpec('data'))
  put = lambda b: {k: jax.make_array_from_process_local_data(sharding, v) for k, v in b.items()}  # noqa: E731
  it = data.prefetch_to_devices(batches(), put, size=2)
  first = next(it)
  assert pulled == [0, 1]                                    # two batches on the devices, no more
  assert isinstance(first['x'], jax.Array) and first['x'].sharding == sharding
  rest = list(it)
  assert [int(np.asarray(b['x'])[0, 0]) for b in [first, *rest]] == [0, 1, 2, 3, 4]


def test_non_positive_batch_size_is_rejected(fashion_dir):
  src = data.create_source('fashion_mnist', fashion_dir)
  with pytest.raises(ValueError, match='batch_size must be a positive integer, got 0'):
    data.eval_batches(src, SPEC, 0)


def test_real_fashion_mnist_from_the_debian_package():
  # scripts/test.sh installs Debian's dataset-fashion-mnist; this reads the real files offline.
  assert sources.find_fashion_mnist(None), 'install the dataset-fashion-mnist package (scripts/test.sh does)'
  src = data.create_source('fashion_mnist')
  assert src.split_sizes == {'train': 60_000, 'eval': 10_000}
  ev = data.eval_batches(src, data.ImageSpec(size=28, crop_pct=1.0), 1000)
  labels = np.concatenate([b['label'] for b in ev])
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)  # the test split is balanced
