"""The gradient-flow study: per-head gradients from one forward pass, per-block records, plots, summary."""

import functools
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import ONE_DEVICE, run_module
from inception_jax import gradient_flow
from inception_jax.models import blocks, layers
from inception_jax.models.registry import ModelOutput

AUX_WEIGHT = 0.3


class TinyAux(nn.Module):
  """stem → block1 → (side head) → block2 → (second side head) → fc. The side heads are modules named
  `aux_names` (GoogLeNet's 'aux1', 'aux2'; Inception-v3's single one is 'AuxLogits')."""
  num_classes: int = 3
  aux_names: tuple[str, ...] = ('aux1',)
  param_dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(layers.ConvBN, bn_momentum=0.9)
    head = functools.partial(layers.AuxHead, self.num_classes, pool_window=2, pool_stride=2, proj_features=4)
    heads = train or self.is_initializing()
    aux = []
    x = conv(4, 3, name='stem')(x, train)
    x = conv(6, 3, strides=2, name='block1')(x, train)
    if heads:
      aux.append(head(name=self.aux_names[0])(x, train))
    x = conv(8, 3, strides=2, name='block2')(x, train)
    if heads and len(self.aux_names) > 1:
      aux.append(head(name=self.aux_names[1])(x, train))
    logits = layers.classifier(self, self.num_classes, name='fc')(layers.global_avg_pool(x))
    return ModelOutput(logits, tuple(aux) if train else ())


@pytest.fixture(scope='module')
def setup():
  model = TinyAux()
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  labels = jnp.array([0, 1, 2, 1])
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x, train=True)
  return model, variables, x, labels


def _block_norm(grads, block):
  return float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads.get(block, {})))))


def test_aux_gradient_is_zero_above_its_branch_point_and_not_below(setup):
  model, variables, x, labels = setup
  _, (main, aux), _ = gradient_flow.head_gradients(
      model, variables['params'], variables['batch_stats'], x, labels, jax.random.key(3), smoothing=0.1,
      aux_weight=AUX_WEIGHT)
  structure = blocks.block_structure(model, 12)
  assert structure.aux_branch == {'aux1': 'block1'}
  assert structure.upstream_of('aux1') == ('stem', 'block1')
  for block in ('stem', 'block1', 'aux1'):
    assert _block_norm(aux, block) > 0
  for block in ('block2', 'fc'):
    assert _block_norm(aux, block) == 0.0
  assert _block_norm(main, 'aux1') == 0.0 and _block_norm(main, 'block2') > 0


def test_total_gradient_is_main_plus_weighted_aux(setup):
  """The total comes from its own backward pass; linearity of the backward pass makes it the weighted sum."""
  model, variables, x, labels = setup
  values, (main, aux), total = gradient_flow.head_gradients(
      model, variables['params'], variables['batch_stats'], x, labels, jax.random.key(3), smoothing=0.1,
      aux_weight=AUX_WEIGHT)
  combined = jax.tree.map(lambda m, a: m + AUX_WEIGHT * a, main, aux)
  for t, c in zip(jax.tree.leaves(total), jax.tree.leaves(combined)):
    np.testing.assert_allclose(t, c, rtol=1e-5, atol=1e-7)
  # ... and equals the gradient of the training loss computed the ordinary way.
  from inception_jax import losses

  def loss(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                         rngs={'dropout': jax.random.key(3)}, mutable=['batch_stats'])
    return losses.total_loss(out.logits, out.aux_logits, labels, smoothing=0.1, aux_weight=AUX_WEIGHT)[0]

  for t, g in zip(jax.tree.leaves(total), jax.tree.leaves(jax.grad(loss)(variables['params']))):
    np.testing.assert_allclose(t, g, rtol=1e-5, atol=1e-7)
  assert values.shape == (2,)


def test_each_heads_gradient_is_jax_grad_of_that_heads_loss_alone():
  """The probe's per-head gradients (one forward pass, one backward pass per head) against each head's
  loss differentiated on its own, from a forward pass of its own."""
  from inception_jax import losses
  model = TinyAux(aux_names=('aux1', 'aux2'))
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  labels = jnp.array([0, 1, 2, 1])
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x, train=True)
  rng = jax.random.key(3)
  values, per_head, _ = gradient_flow.head_gradients(model, variables['params'], variables['batch_stats'], x,
                                                     labels, rng, smoothing=0.1, aux_weight=AUX_WEIGHT)
  assert len(per_head) == 3

  def head_loss(params, h):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=True,
                         rngs={'dropout': rng}, mutable=['batch_stats'])
    return losses.label_smoothed_cross_entropy(((out.logits,) + out.aux_logits)[h], labels, 0.1)

  for h in range(3):
    alone = jax.grad(head_loss)(variables['params'], h)
    for probe_leaf, grad_leaf in zip(jax.tree.leaves(per_head[h]), jax.tree.leaves(alone)):
      np.testing.assert_allclose(probe_leaf, grad_leaf, rtol=1e-5, atol=1e-7)
    assert float(values[h]) == pytest.approx(float(head_loss(variables['params'], h)), rel=1e-6)


def test_records_hold_total_equals_main_plus_weighted_aux_in_norms_and_cosines():
  """g_total (its own backward pass) = g_main + w·(g_aux1 + g_aux2), block by block, as the records state
  it: ‖g_total‖² and g_total·g_main both follow from the heads' norms and their pairwise cosines."""
  model = TinyAux(aux_names=('aux1', 'aux2'))
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x, train=True)
  names = list(blocks.block_structure(model, 12).order)
  probe = jax.jit(gradient_flow.make_probe(model, names, smoothing=0.1, aux_weight=AUX_WEIGHT))
  measured = jax.device_get(probe(variables['params'], variables['batch_stats'],
                                  {'image': x, 'label': jnp.array([0, 1, 2, 1])}, jax.random.key(3)))
  records = gradient_flow.records(0, measured, ['main', 'aux1', 'aux2'], names)
  weights = {'main': 1.0, 'aux1': AUX_WEIGHT, 'aux2': AUX_WEIGHT}
  checked = 0
  for block in names:
    at = {r['head']: r for r in records if r['block'] == block}
    norm = {h: at[h]['grad_norm'] for h in at}
    dot = lambda a, b: norm[a] * norm[b] * (at[a]['cos'][b] or 0.0)  # noqa: E731
    total_sq = sum(weights[a] * weights[b] * dot(a, b) for a in weights for b in weights)
    assert norm['total'] ** 2 == pytest.approx(total_sq, rel=1e-4, abs=1e-12), block
    if norm['main'] > 0:
      assert dot('total', 'main') == pytest.approx(sum(weights[a] * dot(a, 'main') for a in weights),
                                                   rel=1e-4, abs=1e-12)
      checked += 1
    for a in at:   # the cosine matrix is symmetric, and each gradient's cosine to itself is 1
      assert at[a]['cos'][a] in (None, pytest.approx(1.0))
      for b in at:
        assert at[a]['cos'][b] == at[b]['cos'][a] or at[a]['cos'][b] == pytest.approx(at[b]['cos'][a])
  assert checked >= 4   # stem, block1, block2, fc: the main head reaches them
  # Both side heads reach the stem, the second one block2 as well, the first one not.
  stem = {r['head']: r['grad_norm'] for r in records if r['block'] == 'stem'}
  assert stem['aux1'] > 0 and stem['aux2'] > 0
  assert {r['head']: r['grad_norm'] for r in records if r['block'] == 'block2'}['aux1'] == 0.0
  # The block's weights, for ‖g‖/‖w‖: its parameter norm and count.
  stem_params = variables['params']['stem']
  assert records[0]['param_count'] == sum(p.size for p in jax.tree.leaves(stem_params))
  assert records[0]['param_norm'] == pytest.approx(
      float(np.sqrt(sum(np.sum(np.square(p)) for p in jax.tree.leaves(stem_params)))), rel=1e-5)


def test_the_next_seed_of_a_run_reuses_the_probes_compiled_measurement(tmp_path):
  from inception_jax import data
  spec = data.ImageSpec(size=12)

  def flow(name, model=TinyAux(), smoothing=0.1, seed=0):
    return gradient_flow.GradientFlow(model, spec, 1, str(tmp_path / name), smoothing=smoothing,
                                      aux_weight=AUX_WEIGHT, seed=seed, time_overhead=False)

  first = flow('seed0')
  assert flow('seed1', seed=1).probe is first.probe   # an equal model: the same jitted function
  assert flow('other', smoothing=0.0).probe is not first.probe
  assert flow('two_heads', model=TinyAux(aux_names=('aux1', 'aux2'))).probe is not first.probe


def test_records_per_head_and_block(setup):
  model, variables, x, labels = setup
  names = list(blocks.block_structure(model, 12).order)
  probe = jax.jit(gradient_flow.make_probe(model, names, smoothing=0.1, aux_weight=AUX_WEIGHT))
  rng = jax.random.key(3)
  measured = probe(variables['params'], variables['batch_stats'], {'image': x, 'label': labels}, rng)
  records = gradient_flow.records(7, jax.device_get(measured), ['main', 'aux1'], names)
  assert len(records) == 3 * len(names)  # main, aux1, total
  by = {(r['head'], r['block']): r for r in records}
  _, (main, aux), total = gradient_flow.head_gradients(
      model, variables['params'], variables['batch_stats'], x, labels, rng, smoothing=0.1,
      aux_weight=AUX_WEIGHT)
  for head, grads in (('main', main), ('aux1', aux), ('total', total)):
    for block in names:
      assert by[(head, block)]['grad_norm'] == pytest.approx(_block_norm(grads, block), rel=1e-5, abs=1e-9)
  flat = lambda g, b: np.concatenate([np.ravel(a) for a in jax.tree.leaves(g[b])])  # noqa: E731
  expected_cos = np.dot(flat(main, 'stem'), flat(aux, 'stem')) / (
      np.linalg.norm(flat(main, 'stem')) * np.linalg.norm(flat(aux, 'stem')))
  assert by[('aux1', 'stem')]['cos_to_main'] == pytest.approx(expected_cos, rel=1e-4)
  assert by[('main', 'stem')]['cos_to_main'] == pytest.approx(1.0)
  assert by[('aux1', 'block2')]['cos_to_main'] is None  # no gradient there
  assert all(r['step'] == 7 for r in records)


def test_plots_and_summary_are_written(tmp_path, setup):
  model, variables, x, labels = setup
  structure = blocks.block_structure(model, 12)
  names = list(structure.order)
  probe = jax.jit(gradient_flow.make_probe(model, names, smoothing=0.1, aux_weight=AUX_WEIGHT))
  records = []
  params = variables['params']
  for step in (0, 5, 10):  # a few plain SGD steps between measurements
    measured = jax.device_get(probe(params, variables['batch_stats'], {'image': x, 'label': labels},
                                    jax.random.key(step)))
    records += gradient_flow.records(step, measured, ['main', 'aux1'], names)
    _, _, total = gradient_flow.head_gradients(model, params, variables['batch_stats'], x, labels,
                                               jax.random.key(step), smoothing=0.1, aux_weight=AUX_WEIGHT)
    params = jax.tree.map(lambda p, g: p - 0.5 * g, params, total)
  g = gradient_flow.Gradients.from_records(records, gradient_flow.describe_blocks(structure, names))
  written = gradient_flow.plot(g, str(tmp_path))
  assert sorted(os.path.basename(p) for p in written) == [
      'depth_profile.png', 'heatmap_aux1.png', 'heatmap_main.png', 'heatmap_total.png']
  for path in written:
    with Image.open(path) as image:
      assert image.format == 'PNG' and image.size[0] > 300
  share = g.aux_share()[g.blocks.index('stem'), 0]
  # ‖w·g_aux‖ from the recorded norm of aux1 alone (one aux head): the recomputation must agree.
  at = {r['head']: r['grad_norm'] for r in records if r['step'] == 0 and r['block'] == 'stem'}
  assert share == pytest.approx(AUX_WEIGHT * at['aux1'] / (at['main'] + AUX_WEIGHT * at['aux1']), rel=1e-3)
  text = gradient_flow.summary(g, AUX_WEIGHT, {'probe_s': 2.0, 'train_step_s': 1.0, 'ratio': 2.0})
  assert f'{share:.1%} of the gradient norm at step 0' in text
  assert 'aux1, after block1' in text and '2.00× a plain training step' in text
  # The depth comparison: the stem's ‖g‖/‖w‖ over that of block2, the last block below the classifier.
  stem, top = (g.blocks.index(b) for b in ('stem', 'block2'))
  ratio = g.relative('main')[stem, 0] / g.relative('main')[top, 0]
  assert g.stem_and_top == ('stem', 'block2')
  assert f'in the stem is {ratio:.3g}× that of the last block below the classifier (block2)' in text


@pytest.mark.parametrize('aux_names', [('AuxLogits',), ('aux1', 'aux2')])
def test_every_number_of_the_summary_is_finite_whatever_the_side_heads_are_called(aux_names):
  """Inception-v3's side head is the module 'AuxLogits' and is recorded as 'aux1': the summary finds its
  records under the recorded name (it once looked them up under the module's and printed nan)."""
  model = TinyAux(aux_names=aux_names)
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x, train=True)
  structure = blocks.block_structure(model, 12)
  names = list(structure.order)
  heads = gradient_flow.head_names(len(aux_names))
  probe = jax.jit(gradient_flow.make_probe(model, names, smoothing=0.1, aux_weight=AUX_WEIGHT))
  records = []
  for step in (0, 5):
    measured = jax.device_get(probe(variables['params'], variables['batch_stats'],
                                    {'image': x, 'label': jnp.array([0, 1, 2, 1])}, jax.random.key(step)))
    records += gradient_flow.records(step, measured, heads, names)
  g = gradient_flow.Gradients.from_records(records, gradient_flow.describe_blocks(structure, names))
  text = gradient_flow.summary(g, AUX_WEIGHT)
  numbers = re.findall(r'(?<![\w/])(?:nan|inf|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)', text)
  assert numbers and all(np.isfinite(float(n)) for n in numbers), text
  assert 'nan' not in text
  first = 'aux1 (AuxLogits), after block1' if aux_names == ('AuxLogits',) else 'aux1, after block1'
  assert first in text
  if len(aux_names) > 1:
    assert 'aux2, after block2' in text


@pytest.mark.slow
def test_command_line_study_on_googlenet(tmp_path, fashion_dir):
  """End to end on a real model with two auxiliary heads: a few steps of the embedded dataset's format."""
  workdir = tmp_path / 'flow'
  # 65 px, the smallest at which the paper's auxiliary heads run (224 px costs ~12× the compute).
  result = run_module('experiments.gradient_flow', '--config=v1', f'--workdir={workdir}', '--steps=4',
                      '--every=2', f'--config.data_dir={fashion_dir}', '--config.batch_size=8',
                      '--config.image_size=65', '--config.eval_batch_size=8', **ONE_DEVICE)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in open(workdir / 'gradient_flow.jsonl')]
  assert {r['step'] for r in records} == {0, 2}
  assert {r['head'] for r in records} == {'main', 'aux1', 'aux2', 'total'}
  assert {'conv1', 'inception4a', 'aux1', 'inception4d', 'aux2', 'fc'} <= {r['block'] for r in records}
  aux1_above = [r for r in records if r['head'] == 'aux1' and r['block'] in ('inception4b', 'inception5b', 'fc')]
  assert aux1_above and all(r['grad_norm'] == 0.0 for r in aux1_above)
  for name in ('heatmap_main.png', 'heatmap_aux2.png', 'depth_profile.png', 'summary.txt'):
    assert (workdir / name).exists()
  assert 'In the stem (conv1) the auxiliary heads carry' in (workdir / 'summary.txt').read_text()


def test_comparison_runs_differ_in_the_auxiliary_heads_only():
  from experiments import gradient_flow as cli
  from experiments.configs import base, v1, v3
  runs = cli.variants(base.short_run(v3.get_config(), 10))
  assert list(runs) == ['no_aux', 'aux', 'bn_aux']
  assert [c.aux_logits for c in runs.values()] == [False, True, True]
  assert [runs['aux'].model_overrides.aux_bn, runs['bn_aux'].model_overrides.aux_bn] == [False, True]
  assert {c.image_size for c in runs.values()} == {107}  # the aux heads' minimum, for all three
  runs = cli.variants(base.short_run(v1.get_config(), 10))
  assert list(runs) == ['no_aux', 'aux']
  config = v1.get_config()
  with config.unlocked():
    config.model = 'xception'
  with pytest.raises(ValueError, match='xception has no auxiliary heads'):
    cli.variants(config)
