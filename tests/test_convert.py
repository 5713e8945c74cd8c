"""Importing pretrained weights from Keras, torchvision and timm files.

Parity: each peer library builds its own randomly initialised model, its BatchNorm layers get non-trivial
statistics (random gamma/beta, then training-mode passes), it is saved the way users get such files, and
the converted model's eval-mode logits must equal the peer's on the same random batch to 1e-4.

A random deep network has to be kept well conditioned for float32 logits to mean anything at that
tolerance. With the peers' own initialisations, a plain (non-residual) Inception is chaotic once its BN
statistics are calibrated to its activations (rounding grows ~1.5× per module: the peer's own float32 logits
then differ from its float64 ones by up to 1e-3 for Inception-v4). So the plain networks get He-normal
convolutions and statistics moved part of the way (three passes at PyTorch's momentum 0.1); the residual
ones keep their own initialisation and get statistics calibrated to one batch (momentum 1), which leaves
their logits input-dependent. Either way float32 noise stays near 1e-6 with logits of order one, so the
tolerance can only be missed by a real difference.
"""

import os
import pickle
import sys

import jax
import keras
import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from inception_jax import convert
from inception_jax.convert import core

SIZE = 107          # every model's grids stay at least 2×2; Xception meets an even grid (26×26)
TOLERANCE = 1e-4
BATCH = np.random.RandomState(1).randn(2, SIZE, SIZE, 3).astype(np.float32)  # NHWC


def our_logits(pretrained: convert.Pretrained, x: np.ndarray = BATCH, kernels: str = 'auto') -> np.ndarray:
  model = pretrained.create_model(kernels=kernels)
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False).logits)(pretrained.variables, x))


# --- PyTorch peers --------------------------------------------------------------------------------------


def torch_peer(make, calibration_size: int = SIZE, plain: bool = True) -> torch.nn.Module:
  """The peer with non-default statistics; `plain` networks get He-normal convolutions (see above)."""
  torch.manual_seed(0)
  model = make()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d) and plain:
        torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.8, 1.2)
        m.bias.normal_(0.0, 0.1)
        m.momentum = 0.1 if plain else 1.0
    model.train()
    for _ in range(3 if plain else 1):
      model(torch.randn(4, 3, calibration_size, calibration_size))
  return model.eval()


def torch_logits(model: torch.nn.Module, x: np.ndarray = BATCH) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def save_torch(state: dict, path, form: str) -> str:
  """The forms users get: a bare state dict, a training checkpoint of a DDP model, or safetensors."""
  path = str(path)
  if form == 'safetensors':
    save_file({k: v.contiguous() for k, v in state.items()}, path)
  elif form == 'wrapped':
    torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in state.items()}}, path)
  else:
    torch.save(state, path)
  return path


TORCH_CASES = {
    # source: (builder, file name, form, calibration size, plain network)
    'torchvision:inception_v3': (
        lambda: torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False),
        'inception_v3_google.pth', 'state_dict', 299, True),  # the aux head needs a 17×17 grid to train
    'torchvision:googlenet': (
        lambda: torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False),
        'googlenet.pth', 'state_dict', SIZE, True),
    'timm:inception_v3': (lambda: timm.create_model('inception_v3'), 'model.safetensors', 'safetensors', SIZE,
                          True),
    'timm:inception_v4': (lambda: timm.create_model('inception_v4'), 'model.safetensors', 'safetensors', SIZE,
                          True),
    'timm:inception_resnet_v2': (lambda: timm.create_model('inception_resnet_v2'), 'pytorch_model.bin',
                                 'state_dict', SIZE, False),
    'timm:legacy_xception': (lambda: timm.create_model('legacy_xception'), 'checkpoint.pth.tar', 'wrapped',
                             SIZE, False),
}


@pytest.mark.slow
@pytest.mark.parametrize('source', sorted(TORCH_CASES))
def test_torch_logits_equal_the_peers(source, tmp_path):
  make, name, form, calibration_size, plain = TORCH_CASES[source]
  peer = torch_peer(make, calibration_size, plain)
  path = save_torch(peer.state_dict(), tmp_path / name, form)
  pretrained = convert.convert(source, path)
  expected = torch_logits(peer)
  assert np.std(expected, axis=0).mean() > 1e-3  # the logits depend on the input: a test that can fail
  for kernels in ('lax', 'cpu'):
    np.testing.assert_allclose(our_logits(pretrained, kernels=kernels), expected, rtol=0, atol=TOLERANCE,
                               err_msg=f'kernels={kernels}')


def test_torch_auxiliary_heads_come_along(tmp_path):
  """torchvision's aux heads are converted with the trunk (for fine-tuning with them); a file without them
  gives a model without them."""
  peer = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
  with_aux = convert.convert('torchvision:googlenet', save_torch(peer.state_dict(), tmp_path / 'a.pth', ''))
  assert with_aux.aux_logits and 'aux2' in with_aux.variables['params']
  np.testing.assert_array_equal(with_aux.variables['params']['aux1']['fc']['bias'],
                                peer.aux1.fc2.bias.detach().numpy())
  trunk_only = {k: v for k, v in peer.state_dict().items() if not k.startswith('aux')}
  without = convert.convert('torchvision:googlenet', save_torch(trunk_only, tmp_path / 'b.pth', ''))
  assert not without.aux_logits and 'aux1' not in without.variables['params']


def test_background_class_of_1001_class_checkpoints_is_dropped(tmp_path):
  peer = torch_peer(lambda: timm.create_model('inception_resnet_v2', num_classes=1001), plain=False)
  path = save_torch(peer.state_dict(), tmp_path / 'tf_slim_port.pth', '')
  pretrained = convert.convert('timm:inception_resnet_v2', path)
  assert pretrained.num_classes == 1000
  np.testing.assert_allclose(our_logits(pretrained), torch_logits(peer)[:, 1:], rtol=0, atol=TOLERANCE)


# --- Keras peers ----------------------------------------------------------------------------------------


def keras_peer(build, plain: bool = True) -> keras.Model:
  """As `torch_peer`, in Keras (whose BN momentum is PyTorch's 1 - momentum)."""
  keras.utils.set_random_seed(0)
  model = build(weights=None, input_shape=(SIZE, SIZE, 3))
  he = keras.initializers.HeNormal(seed=1)
  rng = np.random.RandomState(2)
  for layer in model.layers:
    if type(layer) is keras.layers.Conv2D and plain:
      layer.kernel.assign(he(layer.kernel.shape))
    elif isinstance(layer, keras.layers.BatchNormalization):
      if layer.scale:
        layer.gamma.assign(rng.uniform(0.8, 1.2, layer.gamma.shape))
      layer.beta.assign(rng.normal(0.0, 0.1, layer.beta.shape))
      layer.momentum = 0.9 if plain else 0.0
  for _ in range(3 if plain else 1):
    model(rng.randn(4, SIZE, SIZE, 3).astype(np.float32), training=True)
  return model


def keras_logits(model: keras.Model, x: np.ndarray = BATCH) -> np.ndarray:
  """Keras' classifier ends in a softmax; the logits are what goes into it."""
  classifier = model.layers[-1]
  activation, classifier.activation = classifier.activation, keras.activations.linear
  try:
    return np.asarray(model(x, training=False))
  finally:
    classifier.activation = activation


KERAS_CASES = {
    # source: (builder, file name, plain network)
    'keras:InceptionV3': (keras.applications.InceptionV3, 'model.keras', True),         # Keras 3 model.save
    'keras:Xception': (keras.applications.Xception, 'model.h5', False),                 # legacy HDF5
    'keras:InceptionResNetV2': (keras.applications.InceptionResNetV2, 'model.keras', False),
}


@pytest.mark.slow
@pytest.mark.parametrize('source', sorted(KERAS_CASES))
def test_keras_logits_equal_the_peers(source, tmp_path):
  build, name, plain = KERAS_CASES[source]
  peer = keras_peer(build, plain)
  path = str(tmp_path / name)
  peer.save(path)
  expected = keras_logits(peer)
  pretrained = convert.convert(source, path)
  assert np.std(expected, axis=0).mean() > 1e-3
  for kernels in ('lax', 'cpu'):
    np.testing.assert_allclose(our_logits(pretrained, kernels=kernels), expected, rtol=0, atol=TOLERANCE,
                               err_msg=f'kernels={kernels}')


@pytest.mark.slow
def test_keras_numbered_names_may_start_anywhere(tmp_path):
  """A process that built other models first names the layers conv2d_94, ... (Keras 2 started at
  conv2d_1). Matching goes by creation order, not by the numbers."""
  keras.applications.InceptionV3(weights=None, input_shape=(SIZE, SIZE, 3))
  peer = keras_peer(keras.applications.InceptionV3)
  first_conv = next(layer for layer in peer.layers if type(layer) is keras.layers.Conv2D)
  assert first_conv.name != 'conv2d'
  path = str(tmp_path / 'later.h5')
  peer.save(path)
  pretrained = convert.convert('keras:InceptionV3', path)
  np.testing.assert_array_equal(pretrained.variables['params']['Conv2d_1a_3x3']['conv']['kernel'],
                                first_conv.kernel.numpy())
  np.testing.assert_allclose(our_logits(pretrained), keras_logits(peer), rtol=0, atol=TOLERANCE)


def test_keras3_bare_weights_file(tmp_path, monkeypatch):
  """Keras 3's save_weights numbers layers by graph position; Keras itself tells the order (without it,
  one clear error with the way out)."""
  peer = keras_peer(keras.applications.Xception, plain=False)
  path = str(tmp_path / 'model.weights.h5')
  peer.save_weights(path)
  np.testing.assert_allclose(our_logits(convert.convert('keras:Xception', path)), keras_logits(peer),
                             rtol=0, atol=TOLERANCE)
  monkeypatch.setitem(sys.modules, 'keras', None)
  with pytest.raises(convert.ConversionError, match=r"only Keras can tell: install keras, or give the "
                                                    r"\.keras file"):
    convert.convert('keras:Xception', path)


# --- saving, loading, fine-tuning -----------------------------------------------------------------------


def test_saved_directory_loads_without_the_peer(tmp_path):
  peer = torch_peer(lambda: timm.create_model('legacy_xception'), plain=False)
  pretrained = convert.convert('timm:legacy_xception', save_torch(peer.state_dict(), tmp_path / 'x.pth', ''))
  directory = convert.save(pretrained, str(tmp_path / 'out'))
  model, variables = convert.load_pretrained(directory)
  assert model.padding_style == 'torch' and model.bn_epsilon == 1e-5
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False).logits)(variables, BATCH)
  np.testing.assert_array_equal(np.asarray(logits), our_logits(pretrained))


def test_save_refuses_a_directory_in_use(tmp_path):
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'notes.txt').write_text('keep me')
  pretrained = core.Pretrained('lenet', 10, False, {}, 'test', {'params': {}, 'batch_stats': {}})
  with pytest.raises(convert.ConversionError, match='not an empty directory'):
    convert.save(pretrained, str(tmp_path / 'out'))
  assert (tmp_path / 'out' / 'notes.txt').read_text() == 'keep me'


# --- bad files ------------------------------------------------------------------------------------------


def test_file_for_another_architecture_names_the_first_tensor(tmp_path):
  peer = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
  path = save_torch(peer.state_dict(), tmp_path / 'googlenet.pth', '')
  with pytest.raises(convert.ConversionError, match=r"no tensor 'Conv2d_1a_3x3.conv.weight' \(for "
                                                    r'Conv2d_1a_3x3/conv/kernel of torchvision:inception_v3'):
    convert.convert('torchvision:inception_v3', path)
  state = timm.create_model('inception_v3', num_classes=10).state_dict()
  state['Mixed_5b.branch1x1.conv.weight'] = torch.zeros(64, 192, 3, 3)
  path = save_torch(state, tmp_path / 'edited.pth', '')
  with pytest.raises(convert.ConversionError,
                     match=r"'Mixed_5b.branch1x1.conv.weight' has shape \(64, 192, 3, 3\) but .* needs "
                           r'\(64, 192, 1, 1\)'):
    convert.convert('timm:inception_v3', path)


def test_extra_tensors_are_an_error(tmp_path):
  state = timm.create_model('inception_v4', num_classes=5).state_dict()
  state['head.extra.weight'] = torch.zeros(3)
  with pytest.raises(convert.ConversionError, match=r"1 tensor\(s\) .* the first 'head.extra.weight'"):
    convert.convert('timm:inception_v4', save_torch(state, tmp_path / 'v4.pth', ''))


def test_keras_file_for_another_architecture(tmp_path):
  path = str(tmp_path / 'xception.h5')
  keras.applications.Xception(weights=None, input_shape=(SIZE, SIZE, 3)).save(path)
  with pytest.raises(convert.ConversionError, match='layers named conv2d, conv2d_1, ... where '
                                                    'keras:InceptionV3 has 94'):
    convert.convert('keras:InceptionV3', path)


@pytest.mark.parametrize('name', ['model.safetensors', 'model.pth', 'model.h5'])
def test_truncated_files_are_one_clear_error(tmp_path, name):
  path = tmp_path / name
  if name.endswith('.h5'):
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name='predictions')]).save(str(path))
    source = 'keras:InceptionV3'
  else:
    save_torch(timm.create_model('inception_v4', num_classes=5).state_dict(), path,
               'safetensors' if name.endswith('.safetensors') else '')
    source = 'timm:inception_v4'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(convert.ConversionError, match='truncated or corrupt'):
    convert.convert(source, str(path))


class _Payload:
  def __reduce__(self):
    return (os.system, (f'touch {_Payload.marker}',))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
  _Payload.marker = str(tmp_path / 'ran')
  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    pickle.dump({'fc.weight': _Payload()}, f)
  with pytest.raises(convert.ConversionError, match='refused') as refusal:
    convert.convert('timm:inception_v3', str(path))
  assert not (tmp_path / 'ran').exists()
  # torch's advice to load the file anyway (weights_only=False) is not passed on
  assert 'weights_only` set to `False' not in str(refusal.value)


def test_unknown_source_and_missing_file(tmp_path):
  with pytest.raises(convert.ConversionError, match=r"unknown source 'timm:resnet50'; valid: .*keras:Xception"):
    convert.convert('timm:resnet50', 'x.pth')
  with pytest.raises(convert.ConversionError, match='no such file'):
    convert.convert('timm:inception_v4', str(tmp_path / 'absent.safetensors'))


# --- the command lines and fine-tuning ------------------------------------------------------------------


def test_convert_and_classify_command_lines(tmp_path, capsys):
  from PIL import Image

  from experiments import classify, cli
  from experiments import convert as convert_cli
  peer = torch_peer(lambda: timm.create_model('legacy_xception'), plain=False)
  src = save_torch(peer.state_dict(), tmp_path / 'xception.pth', '')
  out = str(tmp_path / 'weights')
  cli.run(convert_cli.main, ['convert', '--from=timm:legacy_xception', f'--src={src}', f'--out={out}'])
  count = sum(p.numel() for p in peer.parameters())  # BN statistics are buffers, not parameters
  assert f'timm:legacy_xception -> xception (1000 classes, {count:,} parameters)' in capsys.readouterr().out

  image = tmp_path / 'cat.png'
  Image.fromarray(np.random.RandomState(0).randint(0, 255, (320, 400, 3), np.uint8)).save(image)
  cli.run(classify.main, ['classify', f'--weights={out}', '--model=xception', str(image)])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == str(image) and len(lines) == 6
  probabilities = [float(line.split('%')[0]) for line in lines[1:]]
  assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01
  assert lines[1].split('%')[1].strip().startswith('n0')  # a WordNet synset and its name

  with pytest.raises(SystemExit) as e:
    cli.run(convert_cli.main, ['convert', '--from=timm:legacy_xception', f'--src={src}', f'--out={out}'])
  assert e.value.code == 2 and 'not an empty directory' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.run(classify.main, ['classify', f'--weights={out}', '--model=v3', str(image)])
  assert e.value.code == 2 and 'holds xception' in capsys.readouterr().err


def test_converted_directory_is_an_init_from_source(tmp_path):
  """`--config.init_from=DIR` reads converted weights like a run's checkpoint."""
  from inception_jax import checkpoint
  peer = torch_peer(lambda: timm.create_model('legacy_xception', num_classes=7), plain=False)
  pretrained = convert.convert('timm:legacy_xception', save_torch(peer.state_dict(), tmp_path / 'x.pth', ''))
  directory = convert.save(pretrained, str(tmp_path / 'weights'))
  weights = checkpoint.read_weights(directory)
  np.testing.assert_array_equal(weights['params']['fc']['kernel'], peer.fc.weight.detach().numpy().T)
  np.testing.assert_array_equal(weights['batch_stats']['conv1']['bn']['var'], peer.bn1.running_var.numpy())


def test_convert_lists_its_sources(capsys):
  from experiments import cli
  from experiments import convert as convert_cli
  cli.run(convert_cli.main, ['convert', '--list'])
  out = capsys.readouterr().out
  assert all(name in out for name in convert.SOURCES)
  assert "timm:legacy_xception         -> xception {'bn_epsilon': 1e-05, 'padding_style': 'torch'}" in out
