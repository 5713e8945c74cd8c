"""ImageNet end to end, as a new user meets it: ILSVRC2012 tars in DATA/downloads/manual, then
`python -m experiments.imagenet --config=v3 --config.data_dir=DATA`. The first run prepares TFDS's
imagenet2012 from the tars, trains with 1000 classes and evaluates every validation image; later runs read
the prepared records."""

import json
import os
import shutil

import pytest

from conftest import ILSVRC_SYNSETS, ROOT, run_module, write_ilsvrc_tars

VAL_IMAGES = 11   # not a multiple of the batch: the last eval batch is padded


def _train(data, workdir):
  # The v3 preset as is, cut to two steps of eight images at the smallest input (no aux head there).
  return run_module('experiments.imagenet', '--config=v3', f'--config.data_dir={data}', f'--workdir={workdir}',
                    '--config.total_steps=2', '--config.batch_size=8', '--config.eval_batch_size=8',
                    '--config.image_size=75', '--config.aux_logits=False', '--config.log_every_steps=1',
                    cwd=ROOT, timeout=900)


def _prepared_files(data):
  root = os.path.join(data, 'imagenet2012')
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(root) for f in files}


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
  second = _train(data, tmp_path / 'again')
  assert second.returncode == 0, second.stderr[-3000:]
  assert f'final test accuracy over all {VAL_IMAGES} examples' in second.stdout
  assert _prepared_files(data) == prepared


def test_a_half_copied_tar_is_one_error_line_and_nothing_is_prepared(tmp_path):
  data = tmp_path / 'data'
  train_tar, _ = write_ilsvrc_tars(data / 'downloads' / 'manual', per_synset=2, val_images=2)
  size = os.path.getsize(train_tar)
  with open(train_tar, 'r+b') as f:
    f.truncate(size // 2)
  result = run_module('experiments.imagenet', '--config=v3', f'--config.data_dir={data}',
                      f'--workdir={tmp_path / "run"}', cwd=ROOT)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert [line for line in lines if line.startswith('error:')] == lines[-1:], lines[-5:]
  assert 'ILSVRC2012_img_train.tar is not a whole tar file' in lines[-1] and 'Copy it again' in lines[-1]
  assert not _prepared_files(data)
  assert os.path.getsize(train_tar) == size // 2   # the user's file as it was
