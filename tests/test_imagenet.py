"""ImageNet end to end, as a new user meets it: ILSVRC2012 tars in DATA/downloads/manual, then
`python -m experiments.imagenet --config=v3 --config.data_dir=DATA`. The first run prepares TFDS's
imagenet2012 from the tars, trains with 1000 classes and evaluates every validation image; later runs read
the prepared records."""

import io
import json
import os
import shutil
import tarfile

import pytest

from conftest import ILSVRC_SYNSETS, ONE_DEVICE, ROOT, run_module, write_ilsvrc_tars

VAL_IMAGES = 11   # not a multiple of the batch: the last eval batch is padded


# The v3 preset as is, cut to two steps of eight images at the smallest input (no aux head there) and
# without Polyak averaging (a third copy of the weights to checkpoint: ~10% of the test's time).
V3 = ('--config=v3', '--config.image_size=75', '--config.aux_logits=False', '--config.ema_decay=0.0')
# A later run of any preset reads the same records: LeNet keeps it to seconds.
LENET = ('--config=v1', '--config.model=lenet', '--config.image_size=32')


def _train(data, workdir, preset=V3):
  # On one device, as a user's CPU is (sharding has tests of its own).
  return run_module('experiments.imagenet', *preset, f'--config.data_dir={data}', f'--workdir={workdir}',
                    '--config.total_steps=2', '--config.batch_size=8', '--config.eval_batch_size=8',
                    '--config.log_every_steps=1', cwd=ROOT, timeout=900, **ONE_DEVICE)


def _prepared_files(data):
  # Folders too: TFDS takes any folder of the dataset's version for a prepared dataset.
  root = os.path.join(data, 'imagenet2012')
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, dirs, files in os.walk(root) for f in dirs + files}


@pytest.mark.slow
def test_a_new_user_prepares_imagenet_once_trains_1000_classes_and_evaluates_every_image(tmp_path):
  data = tmp_path / 'data'
  write_ilsvrc_tars(data / 'downloads' / 'manual', per_synset=6, val_images=VAL_IMAGES)
  first = _train(data, tmp_path / 'run')
  assert first.returncode == 0, first.stderr[-3000:]
  assert f'final test accuracy over all {VAL_IMAGES} examples' in first.stdout
  prepared = _prepared_files(data)
  assert any(name.endswith('dataset_info.json') for name in prepared)

  records = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  evals = [r for r in records if 'eval/count' in r]
  assert evals[-1]['eval/count'] == VAL_IMAGES and evals[-1]['step'] == 2
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2]
  from inception_jax import checkpoint
  weights = checkpoint.read_weights(str(tmp_path / 'run'))
  assert weights['params']['fc']['kernel'].shape[-1] == 1000   # ImageNet's classes, not the tars' three
  info = json.load(open(next(n for n in prepared if n.endswith('dataset_info.json'))))
  counts = {s['name']: sum(int(x) for x in s['shardLengths']) for s in info['splits']}
  assert counts == {'train': 6 * len(ILSVRC_SYNSETS), 'validation': VAL_IMAGES}

  # A second run reads the prepared records: it works without the tars and rewrites nothing.
  shutil.rmtree(data / 'downloads')
  second = _train(data, tmp_path / 'again', LENET)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f'final test accuracy over all {VAL_IMAGES} examples' in second.stdout
  assert _prepared_files(data) == prepared


def _cut_halfway(path):
  return os.path.getsize(path) // 2


def _cut_after_a_member(path):
  # A copy that stopped between two synsets' tars: every header read is whole, only the end is missing.
  with tarfile.open(path) as tar:
    return tar.getmembers()[1].offset


@pytest.mark.parametrize('cut', [_cut_halfway, _cut_after_a_member], ids=['halfway', 'after_a_member'])
def test_a_half_copied_tar_is_one_error_line_and_nothing_is_prepared(tmp_path, cut):
  data = tmp_path / 'data'
  train_tar, _ = write_ilsvrc_tars(data / 'downloads' / 'manual', per_synset=2, val_images=2)
  size = cut(train_tar)
  os.truncate(train_tar, size)
  result = _train(data, tmp_path / 'run')
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert [line for line in lines if line.startswith('error:')] == lines[-1:], lines[-5:]
  assert 'ILSVRC2012_img_train.tar is not a whole tar file' in lines[-1] and 'Copy it again' in lines[-1]
  assert not _prepared_files(data)   # the next run prepares from the tars, once they are whole
  assert os.path.getsize(train_tar) == size   # the user's file as it was


def test_a_damaged_synset_tar_fails_preparation_with_one_error_line_and_leaves_nothing_prepared(tmp_path):
  # The outer tar is whole, so only preparing finds the damage, after TFDS has started writing.
  data = tmp_path / 'data'
  manual = data / 'downloads' / 'manual'
  train_tar, _ = write_ilsvrc_tars(manual, per_synset=2, val_images=2)
  garbage = b'not a tar ' * 300
  with tarfile.open(train_tar, 'a') as tar:   # one more synset, whose tar is no tar
    info = tarfile.TarInfo('n01484850.tar')
    info.size = len(garbage)
    tar.addfile(info, io.BytesIO(garbage))
  result = _train(data, tmp_path / 'run')
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert [line for line in lines if line.startswith('error:')] == lines[-1:], lines[-5:]
  assert f'an archive in {manual} is damaged' in lines[-1] and 'copy the files there again' in lines[-1]
  assert not _prepared_files(data)
