"""Studies: claims tested per seed, what is read off a run, the resumable runner, the record and the report,
and the aux-classifier study end to end at its smoke scale (`python -m experiments.study`)."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from conftest import ONE_DEVICE, ROOT, run_module
from inception_jax import gradient_flow, study
from inception_jax.study import claims, measures, report, runner
from inception_jax.study.claims import M


# --- claims ---------------------------------------------------------------------------------------------


def _measures(**per_condition):
  """{condition: [value of 'x' for seed 0, 1, ...]} -> the {condition: {seed: {'x': value}}} claims read."""
  return {c: {s: {'x': v} for s, v in enumerate(values)} for c, values in per_condition.items()}


def test_a_quantity_is_an_expression_over_conditions_measures_evaluated_seed_by_seed():
  q = 1 - M('a', 'steps') / M('b', 'steps')
  assert str(q) == '1 − (steps[a] / steps[b])'
  assert q.conditions() == {'a', 'b'}
  values = {('a', 'steps'): 80.0, ('b', 'steps'): 100.0}
  assert q.evaluate(lambda c, m: values[(c, m)]) == pytest.approx(0.2)
  assert str(-M('a', 'x')) == '−x[a]'
  assert str(M('a', 'x') - M('b', 'x') - (M('c', 'x') - M('d', 'x'))) == 'x[a] − x[b] − (x[c] − x[d])'
  assert math.isnan((M('a', 'x') / M('b', 'x')).evaluate(lambda c, m: 0.0))


def test_the_interval_is_students_t_over_the_seeds_of_the_paired_quantity():
  claim = claims.Claim('c', 'paper', 'a beats b', M('a', 'x') - M('b', 'x'))
  # Per seed: 2.0, 2.1, 1.9 -> mean 2, sd 0.1, t(2 df) = 4.303: half-width 0.2484.
  v = claims.evaluate(claim, _measures(a=[3.0, 3.1, 2.9], b=[1.0, 1.0, 1.0]))
  assert v.values == {0: pytest.approx(2.0), 1: pytest.approx(2.1), 2: pytest.approx(1.9)}
  assert v.mean == pytest.approx(2.0) and v.sd == pytest.approx(0.1) and v.median == pytest.approx(2.0)
  assert claims.t_quantile(2) == pytest.approx(4.3027, abs=1e-4)
  assert (v.low, v.high) == (pytest.approx(2 - 0.24842, abs=1e-4), pytest.approx(2 + 0.24842, abs=1e-4))
  assert v.verdict == study.REPRODUCED and v.seeds_to_decide is None


@pytest.mark.parametrize('values,margin,expects,verdict', [
    ([1.0, 1.1, 0.9], 0.0, 'effect', study.REPRODUCED),     # clearly above 0
    ([-1.0, -1.1, -0.9], 0.0, 'effect', study.REFUTED),     # clearly below
    ([1.0, -1.0, 0.5], 0.0, 'effect', study.UNDECIDED),     # the interval holds 0
    ([0.05, 0.06, 0.04], 0.1, 'effect', study.REFUTED),     # a real effect, but clearly under the margin
    ([0.2, 0.21, 0.19], 0.1, 'effect', study.REPRODUCED),
    ([0.05, 0.06, 0.04], 0.1, 'no_effect', study.REPRODUCED),  # "saves less than 10%": shown
    ([0.2, 0.21, 0.19], 0.1, 'no_effect', study.REFUTED),
    ([0.0, 0.3, -0.2], 0.1, 'no_effect', study.UNDECIDED),
])
def test_verdicts(values, margin, expects, verdict):
  claim = claims.Claim('c', 'paper', 's', M('a', 'x'), expects=expects, margin=margin)
  v = claims.evaluate(claim, _measures(a=values))
  assert v.verdict == verdict, v.reason
  assert (v.seeds_to_decide is None) == (verdict != study.UNDECIDED)


def test_an_undefined_seed_or_too_few_seeds_leave_a_claim_undecided():
  claim = claims.Claim('c', 'paper', 's', M('a', 'x') - M('b', 'x'))
  v = claims.evaluate(claim, _measures(a=[1.0, math.nan, 1.0], b=[0.0, 0.0, 0.0]))
  assert v.verdict == study.UNDECIDED and 'seed(s) 1' in v.reason
  # b has finished one seed: one pair only.
  v = claims.evaluate(claim, {'a': {0: {'x': 1.0}, 1: {'x': 1.0}}, 'b': {0: {'x': 0.0}}})
  assert v.verdict == study.UNDECIDED and '1 seed(s)' in v.reason


def test_seeds_to_decide_is_the_fewest_whose_interval_would_clear_zero():
  # mean 1, sd 1: t(5)/√6 = 1.05 > 1 but t(6)/√7 = 0.925 < 1.
  assert claims.seeds_to_decide(1.0, 1.0, 0.0) == 7
  # 0.5 below a margin of 0.5 at sd 0.5: the same ratio, to exclude the effect; at sd 1, t(n−1)/√n < ½.
  assert claims.seeds_to_decide(0.0, 0.5, 0.5) == 7
  assert claims.seeds_to_decide(0.0, 1.0, 0.5) == 18
  assert claims.seeds_to_decide(0.0, 1.0, 0.0) is None   # exactly on 0: no number of seeds tells


def test_a_claim_that_names_a_missing_condition_is_an_error():
  config = ml_collections.ConfigDict({'seed': 0})
  with pytest.raises(ValueError, match='names conditions it does not have: b'):
    runner.Study('s', '', (runner.Condition('a', config),), (0, 1),
                 claims=(claims.Claim('c', 'p', 's', M('a', 'x') - M('b', 'x')),))


# --- what is read off a run -----------------------------------------------------------------------------


def test_steps_to_a_threshold_is_the_first_crossing_of_the_smoothed_curve():
  curves = {'step': [10, 20, 30, 40, 50], 'top1': [0.2, 0.5, 0.8, 0.9, 0.9]}
  # Smoothed over three windows: 0.3, 0.5, 0.733, 0.867, 0.9.
  assert measures.steps_to(curves, 0.5) == pytest.approx(20.0)
  assert measures.steps_to(curves, 0.6) == pytest.approx(20 + 10 * 0.1 / 0.2333, rel=1e-3)
  assert measures.steps_to(curves, 0.2) == 10.0
  assert math.isnan(measures.steps_to(curves, 0.95))
  # One noisy window alone does not count as a crossing.
  # (Smoothed: 0.433, 0.433, 0.567, 0.567, 0.7, 0.7; the raw curve crosses at step 20.)
  noisy = {'step': [10, 20, 30, 40, 50, 60], 'top1': [0.3, 0.7, 0.3, 0.7, 0.7, 0.7]}
  assert measures.steps_to(noisy, 0.6) == pytest.approx(42.5)


def _records(step, norms, cos_total_main, param_norm=2.0):
  """Probe records of one step: blocks 'stem', 'mid', 'top', 'fc'; rows main, aux1, total."""
  out = []
  for head in ('main', 'aux1', 'total'):
    for b, block in enumerate(('stem', 'mid', 'top', 'fc')):
      cos = {'main': 1.0 if head == 'main' else cos_total_main if head == 'total' else 0.0,
             'aux1': None, 'total': None}
      out.append({'step': step, 'head': head, 'block': block, 'grad_norm': norms[head][b], 'cos': cos,
                  'cos_to_main': cos['main'], 'loss': None, 'param_norm': param_norm, 'param_count': 10})
  return out


BLOCKS = {'blocks': ['stem', 'mid', 'top', 'fc'], 'trunk': ['stem', 'mid', 'top', 'fc'],
          'aux_heads': {'aux1': {'module': 'AuxLogits', 'branch': 'mid', 'upstream': ['stem', 'mid']}}}


def test_gradient_measures_early_and_late():
  # Orthogonal side-head gradient: ‖g_total‖² = ‖g_main‖² + ‖w g_aux‖², so ‖w g_aux‖ = 3 where main is 4
  # and total 5: share 3 / 7. The main gradient at the stem is 1/10 of the top block's (decay −1).
  early = {'main': [0.4, 4.0, 4.0, 1.0], 'aux1': [1.0, 1.0, 0.0, 0.0], 'total': [0.5, 5.0, 4.0, 1.0]}
  late = {'main': [4.0, 4.0, 4.0, 1.0], 'aux1': [1.0, 1.0, 0.0, 0.0], 'total': [4.0, 4.0, 4.0, 1.0]}
  records = _records(0, early, 0.8) + _records(100, late, 1.0)
  g = gradient_flow.Gradients.from_records(records, BLOCKS)
  assert g.lower == ['stem', 'mid'] and g.stem_and_top == ('stem', 'top')
  share = g.aux_share()
  assert share[1, 0] == pytest.approx(3 / 7)          # 'mid', step 0: ‖t − m‖² = 25 + 16 − 2·5·4·0.8 = 9
  assert share[1, 1] == pytest.approx(0.0, abs=1e-9)  # step 100: the total is the main gradient
  m = measures.gradient_measures(g, total_steps=100, early_fraction=0.25)
  assert m['early_main_decay'] == pytest.approx(-1.0)
  assert m['late_main_decay'] == pytest.approx(0.0)
  assert m['early_aux_share'] == pytest.approx(np.median([share[0, 0], 3 / 7]))
  assert m['early_aux_cos'] == pytest.approx(0.0)
  # A round trip through study.json's arrays changes nothing.
  again = gradient_flow.Gradients.from_json(json.loads(json.dumps(g.to_json())))
  assert measures.gradient_measures(again, 100, 0.25) == pytest.approx(m)


def test_run_measures_are_points_and_steps():
  result = {'eval/top1': 0.81, 'eval/top5': 0.99, 'eval_train/top1': 0.9}
  curves = {'step': [10, 20], 'top1': [0.4, 0.7], 'loss_main': [1.0, 0.5], 'learning_rate': [0.1, 0.1]}
  m = measures.run_measures(result, curves, None, 20, (0.5,), 0.25)
  assert m['test_top1'] == pytest.approx(81.0) and m['train_top1'] == pytest.approx(90.0)
  assert m['gap'] == pytest.approx(9.0) and m['final_train_top1'] == pytest.approx(70.0)
  assert m['steps_to_50'] == pytest.approx(10 + 10 * (0.5 - 0.5) / 0.1)


# --- the runner and the report --------------------------------------------------------------------------


def _fake_train(calls):
  """A stand-in for train_and_evaluate: writes a training curve and returns metrics that depend on the
  config's `quality` and the seed, as a run would."""

  def train_fn(config, workdir, make_probe=None):
    calls.append((workdir, config.seed))
    os.makedirs(workdir, exist_ok=True)
    q, s = config.quality, config.seed
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
      for step in (10, 20, 30):
        f.write(json.dumps({'step': step, 'train/top1': q * step / 30, 'train/loss_main': 1 / step,
                            'train/learning_rate': 0.1}) + '\n')
    return {'eval/top1': q - 0.01 * s, 'eval/top5': 1.0, 'eval/count': 10.0}

  return train_fn


def _study(seeds=(0, 1, 2)):
  conditions = tuple(runner.Condition(name, ml_collections.ConfigDict({'seed': 0, 'quality': q}), name, 'g')
                     for name, q in (('good', 0.9), ('bad', 0.6)))
  return runner.Study('toy', 'Is good better than bad?', conditions, seeds, thresholds=(0.5,),
                      claims=(claims.Claim('good_beats_bad', 'folklore', 'good is better',
                                           M('good', 'test_top1') - M('bad', 'test_top1'), 'points'),))


def test_the_runner_trains_each_condition_and_seed_once_and_resumes(tmp_path):
  calls = []
  results = study.run(_study(), str(tmp_path), _fake_train(calls))
  assert sorted(results) == [(c, s) for c in ('bad', 'good') for s in (0, 1, 2)]
  assert [os.path.relpath(w, tmp_path) for w, _ in calls][:2] == ['good/seed_0', 'good/seed_1']
  assert {seed for _, seed in calls} == {0, 1, 2}   # each run's config carries its seed
  assert results[('good', 1)]['eval/top1'] == pytest.approx(0.89)
  assert results[('good', 1)]['condition'] == 'good' and results[('good', 1)]['wall_s'] >= 0
  # A lost result is run again; the rest are read back.
  os.remove(tmp_path / 'bad' / 'seed_2' / 'result.json')
  calls.clear()
  again = study.run(_study(), str(tmp_path), _fake_train(calls))
  assert [os.path.relpath(w, tmp_path) for w, _ in calls] == ['bad/seed_2']
  assert again == results | {('bad', 2): again[('bad', 2)]}


def test_the_record_and_report_hold_every_run_and_the_verdicts_computed_from_them(tmp_path):
  s = _study()
  study.run(s, str(tmp_path), _fake_train([]))
  record = study.write(s, str(tmp_path), machine='a test machine')
  on_disk = json.load(open(tmp_path / 'study.json'))
  assert on_disk == record
  good = record['conditions'][0]
  assert good['name'] == 'good' and sorted(good['runs']) == ['0', '1', '2']
  assert good['runs']['1']['measures']['test_top1'] == pytest.approx(89.0)
  assert good['summary']['test_top1']['median'] == pytest.approx(89.0)
  # good − bad = 30 points for every seed: reproduced; the record's verdicts are those of its measures.
  (verdict,) = record['claims']
  assert verdict['verdict'] == study.REPRODUCED and verdict['mean'] == pytest.approx(30.0)
  assert report.verdicts_from_record(record, s) == record['claims']
  text = (tmp_path / 'report.md').read_text()
  assert '| `good_beats_bad` | folklore |' in text and '**reproduced**' in text
  assert '89.00 [88.00 – 90.00]' in text and 'a test machine' in text
  assert (tmp_path / 'curves.png').stat().st_size > 10_000
  # What a docs page cites: the record without the probe's arrays (still enough to recompute the verdicts)
  # and the plots.
  written = report.publish(record, str(tmp_path), str(tmp_path / 'docs'))
  assert sorted(os.path.basename(p) for p in written) == ['toy.json', 'toy_curves.png']
  published = json.load(open(tmp_path / 'docs' / 'toy.json'))
  assert 'gradients' not in published['conditions'][0]['runs']['0']
  assert report.verdicts_from_record(published, s) == record['claims']
  # A study with a run missing reports it and does not count it.
  os.remove(tmp_path / 'bad' / 'seed_0' / 'result.json')
  record = study.write(s, str(tmp_path))
  assert record['missing_runs'] == ['bad/seed_0']
  assert record['claims'][0]['n'] == 2


def test_a_threshold_some_seeds_never_reached_says_how_many_did():
  summary = report.summarize([{'seed': 0, 'steps_to_80': math.nan}, {'seed': 1, 'steps_to_80': 477.0},
                              {'seed': 2, 'steps_to_80': math.nan}])['steps_to_80']
  assert summary['n'] == 1 and summary['median'] == 477.0
  assert report._cell(summary, 0) == '477 (1 of 3 seeds)'


def test_a_study_can_be_cut_to_some_conditions_and_seeds():
  s = _study().select(['good'], [5, 6])
  assert [c.name for c in s.conditions] == ['good'] and s.seeds == (5, 6)
  assert s.claims == ()   # its claim compares with 'bad'
  with pytest.raises(ValueError, match="no condition 'ugly'; its conditions: good, bad"):
    _study().select(['ugly'])


# --- the aux-classifier study ---------------------------------------------------------------------------


def test_the_aux_classifier_study_compares_each_family_at_one_input_size_and_budget():
  from experiments import studies
  s = studies.get_study('aux_classifiers')
  assert len(s.seeds) >= 3 and len(s.claims) >= 10
  by_group = {}
  for c in s.conditions:
    by_group.setdefault(c.group, []).append(c.config)
  assert len(by_group) == 3
  for configs in by_group.values():
    shared = {(c.model, c.image_size, c.total_steps, c.batch_size, c.optimizer, c.learning_rate,
               c.train_examples) for c in configs}
    assert len(shared) == 1, shared                        # the side heads are the only difference
  v1, v1_aux = (s.condition(f'inception_v1/{n}').config for n in ('no_aux', 'aux'))
  assert (v1.aux_logits, v1_aux.aux_logits, v1_aux.aux_weight, v1.image_size) == (False, True, 0.3, 65)
  assert v1.optimizer == 'sgd'   # an adaptive rule would rescale a fading gradient away
  v3_aux, v3_bn = (s.condition(f'inception_v3/{n}').config for n in ('aux', 'bn_aux'))
  assert (v3_aux.model_overrides.aux_bn, v3_bn.model_overrides.aux_bn, v3_aux.image_size) == (False, True, 107)
  assert v3_aux.learning_rate == 0.001 and v3_aux.optimizer == 'adam'   # as the published record ran
  with pytest.raises(ValueError, match="unknown scale 'huge'"):
    studies.get_study('aux_classifiers', 'huge')


@pytest.fixture
def fashion_64(tmp_path):
  """Fashion-MNIST-format files with 64 training and 32 test images (varied, so runs differ)."""
  from conftest import write_idx
  from inception_jax.data import sources
  rng = np.random.default_rng(0)
  for split, n in (('train', 64), ('eval', 32)):
    images, labels = sources.FASHION_MNIST_FILES[split]
    write_idx(tmp_path / images, rng.integers(0, 256, (n, 28, 28)))
    write_idx(tmp_path / labels, np.arange(n) % 10)
  return str(tmp_path)


# Three of the seven conditions: GoogLeNet without BN with and without its two side heads (the claims that
# compare them are decided) and Inception-v3 with its BN side head. The other four are the same code with
# other settings (checked above), and compiling each condition's programs is most of this test's time.
SMOKE_CONDITIONS = ('inception_v1/no_aux', 'inception_v1/aux', 'inception_v3/bn_aux')


@pytest.mark.slow
def test_the_aux_classifier_study_runs_end_to_end_at_smoke_scale(tmp_path, fashion_64):
  from experiments import studies
  workdir = tmp_path / 'study'
  args = ('--study=aux_classifiers', '--scale=smoke', f'--workdir={workdir}', f'--data_dir={fashion_64}')
  result = run_module('experiments.study', *args, f'--conditions={",".join(SMOKE_CONDITIONS)}', timeout=1500,
                      **ONE_DEVICE)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.load(open(workdir / 'study.json'))
  s = studies.get_study('aux_classifiers', 'smoke', fashion_64).select(SMOKE_CONDITIONS)
  assert [c.id for c in s.claims] == ['v1_main_gradient_fades', 'v1_side_heads_feed_lower_layers',
                                      'v1_side_heads_speed_convergence', 'v1_side_heads_improve_accuracy',
                                      'v1_side_heads_regularise']
  assert [c['name'] for c in record['conditions']] == [c.name for c in s.conditions]
  assert record['missing_runs'] == []
  for c in record['conditions']:
    assert sorted(c['runs']) == ['0', '1']
    run = c['runs']['0']
    assert run['curves']['step'] == [1, 2, 3, 4]
    m = run['measures']
    assert 0 <= m['test_top1'] <= 100 and 'gap' in m
    assert np.isfinite(m['early_main_decay'])
    if c['config']['aux_logits']:
      assert 0 <= m['early_aux_share'] <= 1 and -1 <= m['early_aux_cos'] <= 1
      heads = run['gradients']['rows']
      assert heads == (['main', 'aux1', 'aux2', 'total'] if c['name'] == 'inception_v1/aux'
                       else ['main', 'aux1', 'total'])
  assert [v['id'] for v in record['claims']] == [c.id for c in s.claims]
  assert report.verdicts_from_record(record, s) == record['claims']
  text = (workdir / 'report.md').read_text()
  assert text in result.stdout and '## Claims and verdicts' in text
  assert (workdir / 'gradients.png').exists() and (workdir / 'curves.png').exists()
  # Again: every run is read back, none trains.
  again = run_module('experiments.study', *args, '--conditions=inception_v1/no_aux,inception_v1/aux', **ONE_DEVICE)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('finished before') == 4 and 'step ' not in again.stdout


def test_bad_study_input_is_one_error_line(tmp_path):
  for args, message in (
      (('--study=aux_classifiers', '--scale=huge'), "error: --scale=huge is not a scale of aux_classifiers; "
                                                     'valid: full, smoke'),
      (('--study=aux_classifiers', '--conditions=nope'), "error: study aux_classifiers has no condition 'nope'"),
      (('--study=aux_classifiers', '--seeds=x'), 'error: seeds must be a count'),
      (('--study=nope',), 'error: flag --study=nope: value should be one of <aux_classifiers>'),
  ):
    result = run_module('experiments.study', *args, f'--workdir={tmp_path}/w', cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'w').exists()   # nothing written


def test_the_published_study_page_states_what_its_record_computes():
  """docs/studies/auxiliary_classifiers.md cites docs/studies/aux_classifiers.json: the verdicts must be the
  criteria applied to the record's measures, and every table row on the page a row of the report the
  record gives (no number typed by hand)."""
  from experiments import studies
  record = json.load(open(os.path.join(ROOT, 'docs', 'studies', 'aux_classifiers.json')))
  full = studies.get_study('aux_classifiers', 'full')
  assert record['scale'] == 'full' and record['missing_runs'] == []
  assert [c['name'] for c in record['conditions']] == [c.name for c in full.conditions]
  assert all(sorted(c['runs']) == ['0', '1', '2'] for c in record['conditions'])
  assert report.verdicts_from_record(record, full) == record['claims']
  page = open(os.path.join(ROOT, 'docs', 'studies', 'auxiliary_classifiers.md')).read()
  generated = report.markdown(record).splitlines()
  rows = [line for line in page.splitlines() if line.startswith('| `')]
  assert len(rows) == 3 * len(record['conditions']) + len(record['claims'])   # conditions, results, gradients, claims
  assert [r for r in rows if r not in generated] == []
  starts = tuple(f'- `{v["id"]}` — ' for v in record['claims'])   # each claim's verdict, with its numbers
  bullets = [line for line in page.splitlines() if line.startswith(starts)]
  assert len(bullets) == len(record['claims']) and [b for b in bullets if b not in generated] == []
