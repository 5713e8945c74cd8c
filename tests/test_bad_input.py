"""Bad input to the command lines, as a user would give it: one line on stderr, `error: ...`, that names the
problem and, where there is a choice, what is valid; exit status 2; nothing lost.

Each case runs in its own directory holding a copy of a finished run (run/) and of the Fashion-MNIST
stand-in it trained on (idx/), plus whatever the case's command line names ({placeholders} below, made
on first use). Training cases point --workdir at the finished run unless they are about the workdir
itself; afterwards every file in the directory is byte for byte what it was, and no file was added. The
table in docs/reliability.md lists the same cases.
"""

import os
import pickle
import shlex
import shutil

import numpy as np
import pytest

from conftest import ROOT, run_module, write_idx, write_ilsvrc_tars

# The smallest run: LeNet at 32 pixels, two steps of 8 images of the 40-image Fashion-MNIST stand-in.
TINY = {'model': 'lenet', 'image_size': 32, 'total_steps': 2, 'batch_size': 8, 'eval_batch_size': 8,
        'dataset': 'fashion_mnist', 'data_dir': '{idx}'}


def train_cli(preset='v1', workdir='{run}', **overrides):
  """`python -m experiments.imagenet` with the tiny run's keys, `overrides` replacing or adding keys."""
  keys = {**TINY, **overrides}
  return ('experiments.imagenet', f'--config={preset}', *(f'--config.{k}={v}' for k, v in keys.items()),
          f'--workdir={workdir}')


def convert_cli(source, src):
  return ('experiments.convert', f'--from={source}', f'--src={src}', '--out={tmp}/weights')


CASES = {
    # case: (command line, a distinctive part of the error line, the part that says what is valid)
    'unknown preset': (train_cli(preset='v9'), "unknown preset 'v9'", 'valid presets: bn_inception, googlenet'),
    'argument to a preset that takes none': (
        train_cli(preset='v1:typo'), "the v1 preset takes no argument, got 'typo'", ''),
    'unknown model': (train_cli(model='nope'), "unknown model 'nope'", 'valid names: alexnet, bn_inception'),
    'unknown config key': (train_cli(batch_sise=8), "unknown config key 'batch_sise'",
                           "did you mean 'batch_size'?"),
    'wrong value type': (train_cli(batch_size='eight'), "batch_size must be an integer, got 'eight'", ''),
    'zero batch': (train_cli(batch_size=0), 'batch_size must be a positive integer, got 0', ''),
    'negative batch': (train_cli(batch_size=-8), 'batch_size must be a positive integer, got -8', ''),
    'batch not divisible by the device count': (
        train_cli(batch_size=12), 'batch_size 12 is not divisible by the 8 devices', ''),
    "image size below the model's minimum": (
        train_cli(model='inception_v3', image_size=50), 'image size 50 is below the minimum 75 of inception_v3',
        ''),
    'unknown remat mode': (train_cli(remat='all'), "remat must be '' (off), 'blocks' or 'dots', got 'all'", ''),
    'unknown kernels setting': (train_cli(kernels='tpu'), "kernels must be 'auto', 'lax', 'cpu' or 'gpu', got 'tpu'", ''),
    "block remat for a model without blocks": (
        train_cli(remat='blocks'), "remat='blocks' needs a model built of Inception modules or residual blocks; "
        'lenet has none', "remat='dots' works for every model"),
    'unknown dataset': (train_cli(dataset='no_such_set'), "unknown dataset 'no_such_set'",
                        'valid sources: fashion_mnist, imagenet2012, imagefolder:DIR'),
    'missing ImageNet files': (train_cli(dataset='imagenet2012', data_dir='{empty_dir}'),
                               'ImageNet is not prepared', 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'),
    'half-copied ImageNet tar': (train_cli(dataset='imagenet2012', data_dir='{half_copied_imagenet}'),
                                 'ILSVRC2012_img_train.tar is not a whole tar file', 'Copy it again'),
    'missing ImageFolder': (train_cli(dataset='imagefolder:{tmp}/nowhere'), 'nowhere', 'does not exist'),
    'empty ImageFolder': (train_cli(dataset='imagefolder:{empty_dir}'), 'has no images',
                          'expected one sub-folder per class'),
    'corrupt image': (train_cli(dataset='imagefolder:{corrupt_folder}'),
                      '1 image file(s) cannot be decoded, the first', 'skip_corrupt_images=True'),
    'label out of range in user data': (
        train_cli(data_dir='{bad_labels}'), 'train-labels-idx1-ubyte.gz (train split): 1 label(s) out of range, '
        'the first 12 at example 2', 'valid labels are 0..9'),
    'num_classes differs from the dataset': (
        train_cli(num_classes=5), 'fashion_mnist has 10 classes but num_classes is 5', 'set num_classes=10'),
    'unknown optimizer': (train_cli(optimizer='adagrad'), "unknown optimizer 'adagrad'",
                          'valid names: adam, adamw, nesterov, rmsprop, sgd'),
    'unknown learning-rate schedule': (
        train_cli(schedule='linear'), "unknown learning-rate schedule 'linear'",
        'valid kinds: constant, cosine, staircase_exponential'),
    'negative learning rate': (train_cli(learning_rate=-0.1), 'the learning rate (base_lr) must be a positive '
                               'number, got -0.1', ''),
    'warmup longer than the run': (train_cli(warmup_steps=5), 'warmup_steps (5) exceeds total_steps (2)', ''),
    'workdir that is a file': (train_cli(workdir='{file}'), 'exists and is not a directory', ''),
    'non-existent init_from': (train_cli(init_from='{tmp}/nowhere', workdir='{tmp}/new'),
                               "init_from '", 'no checkpoint there (give a workdir'),
    'weights file for another architecture': (
        convert_cli('torchvision:googlenet', '{inception_v3_file}'), "no tensor 'conv1.conv.weight'",
        'another architecture'),
    'truncated weights file': (convert_cli('timm:inception_v4', '{truncated_file}'), 'truncated or corrupt', ''),
    # The library-level twin is tests/test_convert.py::test_pickle_with_code_is_refused_and_not_run.
    'pickle file that would run code': (
        convert_cli('timm:inception_v3', '{pickle_payload}'), 'refused: the file holds Python objects other than '
        'tensors, and loading them could run code', ''),
    'flag a tool does not have': (('experiments.benchmark', '--batch_size=8'), 'unknown flag --batch_size',
                                  'did you mean --batch?'),
    'flag value of the wrong type': (('experiments.benchmark_input', '--steps=many'),
                                     "flag --steps=many: invalid literal for int()", ''),
    'unknown weights source': (convert_cli('timm:resnet50', '{tmp}/model.pth'), "unknown source 'timm:resnet50'",
                               'valid: keras:InceptionResNetV2'),
}


# --- what the cases' command lines name ------------------------------------------------------------------


def fashion_stand_in(directory, label_changes=None):
  """Fashion-MNIST's four IDX files (40 train, 13 test images; label i % 10), as conftest's fashion_dir;
  `label_changes` {index: label} edits the training labels."""
  from inception_jax.data import sources
  os.makedirs(directory)
  for split, n in (('train', 40), ('eval', 13)):
    images, labels = sources.FASHION_MNIST_FILES[split]
    write_idx(os.path.join(directory, images), np.stack([np.full((28, 28), 2 * i) for i in range(n)]))
    y = np.arange(n) % 10
    if split == 'train':
      for index, label in (label_changes or {}).items():
        y[index] = label
    write_idx(os.path.join(directory, labels), y)
  return directory


def corrupt_folder(directory):
  """An ImageFolder of two classes × three PNGs, and one file that only claims to be a JPEG."""
  from PIL import Image
  for c in ('cat', 'dog'):
    os.makedirs(os.path.join(directory, c))
    for i in range(3):
      Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(os.path.join(directory, c, f'{i}.png'))
  with open(os.path.join(directory, 'dog', 'broken.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 this is not a jpeg')
  return directory


def safetensors_file(path, tensors):
  from safetensors.numpy import save_file
  save_file({k: np.zeros(shape, np.float32) for k, shape in tensors.items()}, path)
  return path


def truncated(path):
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  return path


class _Payload:
  """Unpickled, this runs a shell command: what a malicious weights file holds."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {shlex.quote(self.marker)}',))


def pickle_payload(path, marker):
  with open(path, 'wb') as f:
    pickle.dump({'fc.weight': _Payload(marker)}, f, protocol=2)  # as torch.save writes
  return path


def half_copied_imagenet(root):
  """A data_dir whose train tar stops halfway, as a copy that was interrupted leaves it."""
  train_tar, _ = write_ilsvrc_tars(root / 'imagenet' / 'downloads' / 'manual', per_synset=2, val_images=2)
  truncated(train_tar)
  return root / 'imagenet'


def empty_dir(root):
  os.makedirs(root / 'empty')
  return root / 'empty'


def a_file(root):
  (root / 'a_file').write_text('not a directory')
  return root / 'a_file'


MAKERS = {
    'empty_dir': empty_dir,
    'half_copied_imagenet': half_copied_imagenet,
    'file': a_file,
    'bad_labels': lambda root: fashion_stand_in(root / 'bad_labels', {2: 12}),
    'corrupt_folder': lambda root: corrupt_folder(root / 'images'),
    # Names from Inception-v3 (a 2048-wide classifier) where GoogLeNet's converter looks for its own.
    'inception_v3_file': lambda root: safetensors_file(
        root / 'inception_v3.safetensors', {'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3), 'fc.weight': (10, 2048),
                                            'fc.bias': (10,)}),
    'truncated_file': lambda root: truncated(safetensors_file(
        root / 'model.safetensors', {'features.0.conv.weight': (32, 3, 3, 3), 'last_linear.weight': (10, 1536)})),
    # The payload would create PWNED in the case's directory, which the unchanged-files check would see.
    'pickle_payload': lambda root: pickle_payload(root / 'model.pth', str(root / 'PWNED')),
}


class Placeholders(dict):
  """Fills a command line's {names}: run, idx and tmp are there; the rest are made on first use."""

  def __init__(self, root):
    super().__init__(tmp=str(root), run=str(root / 'run'), idx=str(root / 'idx'))
    self.root = root

  def __missing__(self, name):
    self[name] = str(MAKERS[name](self.root))
    return self[name]


def files_under(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """run/: the tiny command line's finished run (checkpoint, metrics.jsonl, config.json, events), trained
  on idx/; made once per test process, in process, and copied for each case."""
  from experiments.configs import v1
  from inception_jax import train
  root = tmp_path_factory.mktemp('finished')
  fashion_stand_in(root / 'idx')
  config = v1.get_config()
  config.update({**TINY, 'data_dir': str(root / 'idx'), 'total_epochs': None})
  train.train_and_evaluate(config, str(root / 'run'))
  assert (root / 'run' / 'metrics.jsonl').exists() and os.listdir(root / 'run' / 'checkpoints')
  return root


# --- the specification -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_is_one_error_line_exit_status_2_and_nothing_lost(case, tmp_path, finished_run):
  command, says, valid = CASES[case]
  shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
  placeholders = Placeholders(tmp_path)
  module, *args = (part.format_map(placeholders) for part in command)
  before = files_under(tmp_path)
  result = run_module(module, *args)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert [line for line in lines if line.startswith('error:')] == lines[-1:], lines[-5:]
  line = lines[-1]
  assert says.format_map(placeholders) in line and valid in line, line
  assert files_under(tmp_path) == before  # the run's checkpoint and metrics, the data, every other file


@pytest.mark.slow
def test_paths_are_used_as_given_and_never_run_as_shell(tmp_path, finished_run):
  """A workdir, data_dir and init_from full of shell syntax name the directories they spell: the run
  starts from init_from's weights, reads data_dir, writes the workdir, and nothing is executed."""
  odd = tmp_path / 'x; touch PWNED; $(touch PWNED) `touch PWNED` | touch PWNED && touch PWNED'
  shutil.copytree(finished_run, odd)
  command = train_cli(workdir=f'{odd}/new', data_dir=f'{odd}/idx', init_from=f'{odd}/run')
  result = run_module(*command, cwd=tmp_path, PYTHONPATH=ROOT)  # cwd: where a shell would touch PWNED
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'init_from {odd}/run: ' in result.stdout
  assert (odd / 'new' / 'metrics.jsonl').exists() and os.listdir(odd / 'new' / 'checkpoints')
  assert not list(tmp_path.rglob('PWNED')) and not os.path.exists(os.path.join(ROOT, 'PWNED'))


def test_the_documented_table_has_one_row_per_case():
  with open(os.path.join(ROOT, 'docs', 'reliability.md')) as f:
    section = f.read().split('\n## Bad input\n')[1].split('\n## ')[0]
  rows = [line.split(' | ')[0].removeprefix('| ').replace('`', '') for line in section.splitlines()
          if line.startswith('| ') and not line.startswith('| case |')]
  # The last rows need a run in a given state (a NaN batch, a checkpoint of another model, a full disk);
  # tests/test_reliability.py specifies them.
  assert rows == list(CASES) + ['NaN in the input data', 'num_classes differs on resume', 'unwritable workdir',
                                'disk too small for checkpoints']
