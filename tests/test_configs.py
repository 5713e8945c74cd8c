"""The presets: each builds its model and optimizer, documents its command and the paper's numbers, and the
ablation presets differ from their parent in exactly the paper's change."""

import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from experiments import configs
from experiments.configs import base
from inception_jax import models, train
from inception_jax import step as step_lib

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments', 'configs')
PRESETS = sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith('.py') and f not in ('base.py', '__init__.py'))


def load(name, arg=None):
  return importlib.import_module(f'experiments.configs.{name}').get_config(arg)


def flat(config):
  out = {}
  for k, v in config.items():
    if hasattr(v, 'items'):
      out.update({f'{k}.{kk}': vv for kk, vv in flat(v).items()})
    else:
      out[k] = v
  return out


def changes(parent, child):
  a, b = flat(load(parent)), flat(load(child))
  return {k: b.get(k) for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_every_variant_and_ablation_row_has_a_preset():
  assert set(PRESETS) >= {
      'v1', 'googlenet', 'googlenet_no_aux', 'bn_inception', 'v2', 'v2_rmsprop', 'v2_label_smoothing',
      'v2_factorized_7x7', 'v3', 'v4', 'inception_resnet_v1', 'inception_resnet_v2', 'xception',
      'xception_no_residual', 'xception_mid_relu', 'xception_mid_elu'}


@pytest.mark.parametrize('name', PRESETS)
def test_preset_builds_its_model_and_optimizer(name):
  c = load(name)
  info = models.model_info(c.model)
  model = train.build_model(c, num_classes=1000)
  steps_per_epoch = 1_281_167 // c.batch_size
  total = train.duration_steps('total', c, steps_per_epoch)
  tx, schedule = train.build_optimizer(c, total, steps_per_epoch, c.batch_size)
  size = info.min_aux_input_size if c.aux_logits and info.num_aux_heads else info.min_input_size
  state = jax.eval_shape(lambda: step_lib.init_state(model, tx, jax.random.key(0), size, ema=bool(c.ema_decay)))
  assert jax.tree.leaves(state.params)
  assert float(schedule(0)) == pytest.approx(c.learning_rate)
  assert float(schedule(total)) < c.learning_rate  # every recipe decays


@pytest.mark.parametrize('name', PRESETS)
def test_preset_docstring_gives_its_command_and_the_papers_top1(name):
  doc = importlib.import_module(f'experiments.configs.{name}').__doc__
  assert f'python -m experiments.imagenet --config={name} ' in doc
  assert 'top-1' in doc


@pytest.mark.parametrize('name', [p for p in PRESETS if p != 'v3'])
def test_presets_without_variants_reject_an_argument(name):
  with pytest.raises(ValueError, match='takes no argument'):
    load(name, 'typo')


def test_rethinking_table3_rows_each_add_one_change():
  assert changes('v2', 'v2_rmsprop') == {'optimizer': 'rmsprop'}
  assert changes('v2_rmsprop', 'v2_label_smoothing') == {'label_smoothing': 0.1}
  assert changes('v2_label_smoothing', 'v2_factorized_7x7') == {'model_overrides.stem': '3x3'}
  # inception_v3 is inception_v2 with both switches flipped (stem='3x3', aux_bn=True).
  assert changes('v2_factorized_7x7', 'v3') == {'model': 'inception_v3', 'model_overrides.stem': None}
  v2 = load('v2')
  assert (v2.optimizer, v2.optimizer_kwargs.sgd.momentum, v2.label_smoothing) == ('sgd', 0.9, 0.0)
  assert models.create_model('inception_v2').stem == '7x7' and not models.create_model('inception_v2').aux_bn


def test_v3_recipe_is_the_papers():
  c = load('v3')
  assert (c.optimizer, c.optimizer_kwargs.rmsprop.to_dict()) == (
      'rmsprop', {'decay': 0.9, 'epsilon': 1.0, 'momentum': 0.9})
  assert (c.learning_rate, c.schedule, c.decay_rate, c.decay_epochs) == (0.045, 'staircase_exponential', 0.94, 2.0)
  assert (c.clip_norm, c.label_smoothing, c.aux_weight, c.weight_decay) == (2.0, 0.1, 0.4, 4e-5)
  assert c.ema_decay == 0.9999 and c.model_overrides.bn_momentum == 0.9997


def test_rethinking_v2_factorized_row_is_v3_without_bn_auxiliary():
  # The last two rows differ only in the auxiliary head's BN: same trunk.
  kwargs = dict(num_classes=1000, aux_logits=True)
  x = jax.ShapeDtypeStruct((1, 107, 107, 3), jnp.float32)
  count = lambda m: sum(a.size for a in jax.tree.leaves(jax.eval_shape(m.init, jax.random.key(0), x)['params']))
  v2f = models.create_model('inception_v2', stem='3x3', **kwargs)
  v3 = models.create_model('inception_v3', **kwargs)
  # The aux head's 768-wide layer trades its bias (768) for BN's scale and bias (2 × 768).
  assert count(v3) - count(v2f) == 768


def test_xception_ablations_flip_one_switch():
  assert changes('xception', 'xception_no_residual') == {'model_overrides.residual': False}
  assert changes('xception', 'xception_mid_relu') == {'model_overrides.mid_activation': 'relu'}
  assert changes('xception', 'xception_mid_elu') == {'model_overrides.mid_activation': 'elu'}
  c = load('xception')
  assert (c.optimizer, c.learning_rate, c.weight_decay, c.model_overrides.dropout_rate) == ('sgd', 0.045, 1e-5, 0.5)
  assert not c.aux_logits


def test_googlenet_recipes():
  assert changes('v1', 'googlenet_no_aux') == {'aux_logits': False}
  assert changes('v1', 'googlenet') == {'model': 'googlenet'}
  c = load('v1')
  assert (c.optimizer, c.decay_rate, c.decay_epochs, c.aux_weight) == ('sgd', 0.96, 8.0, 0.3)
  bn = load('bn_inception')
  assert (bn.learning_rate, bn.decay_epochs, bn.weight_decay) == (0.045, 8.0 / 6.0, 4e-5)
  assert bn.model_overrides.dropout_rate == 0.0


def test_a_duration_on_the_command_line_replaces_the_presets_other_unit():
  c = configs.set_from_text(load('v3'), {'total_steps': '1000'})   # --config.total_steps=1000
  assert c.total_epochs is None and train.duration_steps('total', c, steps_per_epoch=5000) == 1000
  c = load('v3', 'fashion_mnist')
  preset_checkpoint_every = c.checkpoint_every_steps
  configs.set_from_text(c, {'total_epochs': '2', 'eval_every_steps': '9'})
  assert c.total_steps is None and train.duration_steps('total', c, steps_per_epoch=100) == 200
  assert c.checkpoint_every_steps == preset_checkpoint_every  # not named on the command line: untouched


def test_command_line_values_are_read_as_their_keys_types():
  c = configs.set_from_text(load('v3'), {
      'batch_size': '8', 'bn_per_device': 'true', 'augment.area_range': '(0.5, 1.0)', 'eval_crop_pct': '1',
      'model_overrides.dropout_rate': '0.0', 'warmup_epochs': 'None', 'dataset': 'imagefolder:/data'})
  assert (c.batch_size, c.bn_per_device, c.augment.area_range, c.eval_crop_pct) == (8, True, (0.5, 1.0), 1.0)
  assert (c.model_overrides.dropout_rate, c.warmup_epochs, c.dataset) == (0.0, None, 'imagefolder:/data')
  for texts, message in (({'batch_size': 'eight'}, "batch_size must be an integer, got 'eight'"),
                         ({'augment.flip': 'maybe'}, "augment.flip must be True or False, got 'maybe'"),
                         ({'augment': '1'}, 'augment is a group of keys'),
                         ({'batch_sise': '8'}, "unknown config key 'batch_sise'; did you mean 'batch_size'?")):
    with pytest.raises(ValueError, match=message):
      configs.set_from_text(load('v3'), texts)


def test_base_holds_every_key_presets_set():
  keys = set(flat(base.get_config()))
  for name in PRESETS:
    extra = {k for k in set(flat(load(name))) - keys if not k.startswith('model_overrides.')}
    assert not extra, f'{name} sets keys base.py lacks: {extra}'


def test_short_run_keeps_the_recipe_and_cuts_the_budget():
  """The study tools' budget: the row's optimizer and switches stay; size, data, durations change."""
  paper = importlib.import_module('experiments.configs.v2_rmsprop').get_config()
  short = base.short_run(importlib.import_module('experiments.configs.v2_rmsprop').get_config(), 120,
                         keep={'batch_size'})
  assert (short.optimizer, short.learning_rate, short.optimizer_kwargs.rmsprop.epsilon, short.clip_norm) == (
      paper.optimizer, paper.learning_rate, paper.optimizer_kwargs.rmsprop.epsilon, paper.clip_norm)
  assert short.dataset == 'fashion_mnist' and short.image_size == 107  # Inception-v2's aux head needs 107
  assert short.total_steps == 120 and short.total_epochs is None and short.eval_every_epochs is None
  assert train.duration_steps('total', short, steps_per_epoch=1875) == 120
  assert short.lr_reference_batch == 256 and short.ema_decay == 0.0
  assert paper.model_overrides.bn_momentum == 0.9997 and short.model_overrides.bn_momentum == 0.9
  assert short.batch_size == paper.batch_size  # given on the command line: kept
  no_aux = importlib.import_module('experiments.configs.googlenet_no_aux').get_config()
  assert base.short_run(no_aux, 10).image_size == 32
