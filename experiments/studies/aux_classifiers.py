"""Do the auxiliary classifiers fight vanishing gradients, or regularise?

    python -m experiments.study --study=aux_classifiers --workdir=DIR                 # ~3 h on 2 CPU cores
    python -m experiments.study --study=aux_classifiers --workdir=DIR --scale=smoke   # minutes: the same study, tiny

GoogLeNet (§5) added two side heads (weight 0.3, after 4a and 4d) to push gradient into the lower stages of
a deep network without BatchNorm, and to regularise. Rethinking the Inception Architecture (§4) found that
in its BN network the side head did not speed up early training, only lifted the final plateau a little,
and concluded that it regularises, helped by BN in the head (BN-auxiliary, Table 3: 21.6 → 21.2% top-1
error). The natural reading of the disagreement is BatchNorm: GoogLeNet had none. This study trains both
GoogLeNets (the paper's, without BN, and torchvision's BN-GoogLeNet) and Inception-v3, each with its side
heads off and on (and v3 with BN-auxiliary), on the embedded Fashion-MNIST, three seeds each, with the
gradient-flow probe on, and tests each paper's claims with criteria fixed in this file before the runs.

The budget (`SCALES['full']`), chosen to fit three hours on two CPU cores:
  * input: the smallest the side heads take, shared within a family: 65 px for both GoogLeNets (the
    paper's heads need it), 107 px for Inception-v3;
  * data: the first 5,000 of Fashion-MNIST's training images (a fixed subset: the runs see each image
    several times, so a train-test gap can open within the budget), the whole 10,000-image test split;
    no crops, no photometric distortions (grayscale images), horizontal flips;
  * GoogLeNets: their preset's recipe (SGD with momentum 0.9, weight decay 2e-4, aux weight 0.3, dropout
    0.4 and 0.7, no label smoothing) at the learning rate of the Caffe reference solver at its own batch of
    32 (0.01), cosine decay after 30 warm-up steps, 600 steps of batch 32 (3.8 epochs of the subset);
  * Inception-v3: the embedded default's recipe (`v3:fashion_mnist`: Adam, clipping at 1, label smoothing
    0.1, aux weight 0.4) at the learning rate it had then, 0.001, 20 warm-up steps, 400 steps of batch 32
    (2.6 epochs).
  SGD for the GoogLeNets on purpose: an adaptive update rule (Adam, RMSProp) rescales each parameter's
  step and so hides a gradient that fades with depth, the very thing GoogLeNet's argument is about.

The probe measures every 20 steps; 'early' is the first quarter of a run. Steps to a training accuracy are
read off the training curve (logged every 10 steps). A pilot of one condition (inception_v1 without side
heads, 400 steps, all training images) set only the learning rate and the budget; no claim's quantity was
looked at before the criteria below were written.
"""

from __future__ import annotations

import dataclasses

from experiments.configs import base, preset
from inception_jax.study import EFFECT, NO_EFFECT, Claim, Condition, M, Study

NAME = 'aux_classifiers'


@dataclasses.dataclass(frozen=True)
class Budget:
  """A scale of the study. `recipes='budget'` runs the recipes scaled to a CPU's budget described above, on
  a subset of the embedded Fashion-MNIST; `recipes='paper'` runs each preset's own recipe (its augmentation,
  schedule, averaging, input size) on `dataset`, for the given number of steps."""
  seeds: tuple[int, ...]
  googlenet_steps: int
  v3_steps: int
  train_examples: int      # 0: the whole training split
  eval_examples: int       # 0: the whole test split
  batch_size: int
  eval_batch_size: int
  probe_every: int
  log_every: int
  checkpoints: int         # per run: where an interrupted run resumes from
  recipes: str = 'budget'
  dataset: str = 'fashion_mnist'
  sizes: tuple[int, int] = (65, 107)   # GoogLeNets, Inception-v3: the smallest their side heads take


IMAGENET_STEPS = 30 * 1_281_167 // 256   # 30 epochs of batch 256
SCALES = {
    'full': Budget(seeds=(0, 1, 2), googlenet_steps=600, v3_steps=400, train_examples=5000, eval_examples=0,
                   batch_size=32, eval_batch_size=400, probe_every=20, log_every=10, checkpoints=3),
    # The same conditions, probe and report in minutes (CI runs it): a few steps of batch 8.
    'smoke': Budget(seeds=(0, 1), googlenet_steps=4, v3_steps=4, train_examples=32, eval_examples=16,
                    batch_size=8, eval_batch_size=8, probe_every=1, log_every=1, checkpoints=1),
    # The papers' setting on accelerators: ImageNet at the papers' input sizes, each preset's recipe, cut
    # to 30 epochs (`--data_dir` where ImageNet is prepared; README). No evaluation of the training split
    # (1.28 M images), so the claims about the train-test gap stay undecided there.
    'imagenet': Budget(seeds=(0, 1, 2), googlenet_steps=IMAGENET_STEPS, v3_steps=IMAGENET_STEPS,
                       train_examples=0, eval_examples=0, batch_size=256, eval_batch_size=256,
                       probe_every=1000, log_every=100, checkpoints=30, recipes='paper', dataset='imagenet2012',
                       sizes=(224, 299)),
}

THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
CONVERGENCE = 'steps_to_60'   # the claims' "early convergence": steps to 60% training accuracy


def _common(budget: Budget, steps: int, data_dir: str) -> dict:
  common = {
      'dataset': budget.dataset, 'data_dir': data_dir, 'train_examples': budget.train_examples,
      'eval_examples': budget.eval_examples, 'batch_size': budget.batch_size,
      'eval_batch_size': budget.eval_batch_size, 'total_steps': steps, 'log_every_steps': budget.log_every,
      'eval_every_steps': None, 'checkpoint_every_steps': max(1, steps // budget.checkpoints)}
  if budget.recipes == 'budget':
    common.update({'eval_train': True, 'eval_crop_pct': 1.0, 'augment.area_range': (1.0, 1.0),
                   'augment.color_distort': False, 'warmup_steps': max(1, steps // 20), 'ema_decay': 0.0})
  return common


def _googlenet(name: str, aux: bool, budget: Budget, data_dir: str):
  c = preset('v1' if name == 'inception_v1' else 'googlenet')
  changes = {**_common(budget, budget.googlenet_steps, data_dir), 'image_size': budget.sizes[0], 'aux_logits': aux}
  if budget.recipes == 'budget':
    changes.update({'learning_rate': 0.01, 'lr_reference_batch': None, 'schedule': 'cosine',
                    'model_overrides.bn_momentum': 0.9})
  return base.override(c, changes)


def _v3(aux: bool, aux_bn: bool, budget: Budget, data_dir: str):
  c = preset('v3:fashion_mnist' if budget.recipes == 'budget' else 'v3')
  changes = {**_common(budget, budget.v3_steps, data_dir), 'image_size': budget.sizes[1], 'aux_logits': aux,
             'model_overrides.aux_bn': aux_bn}
  if budget.recipes == 'budget':
    changes['learning_rate'] = 0.001   # the embedded default's rate when the study's criteria were fixed
  return base.override(c, changes)


def _speedup(family: str) -> M:
  """Fraction of the steps to 60% training accuracy that the side heads save (per seed)."""
  return 1 - M(f'{family}/aux', CONVERGENCE) / M(f'{family}/no_aux', CONVERGENCE)


CLAIMS = (
    # GoogLeNet §5, on the network it describes (no BN).
    Claim('v1_main_gradient_fades', 'GoogLeNet §5 (its premise)',
          'Without BN, the main head\'s gradient fades on its way down: early in training the stem\'s '
          '‖g‖/‖w‖ is at least 2× smaller than the last block\'s.',
          -M('inception_v1/no_aux', 'early_main_decay'),
          unit='log10', expects=EFFECT, margin=0.3),
    Claim('v1_side_heads_feed_lower_layers', 'GoogLeNet §5',
          'The side heads "increase the gradient signal that gets propagated back": early in training they '
          'deliver more of the lower blocks\' gradient than the main head (share > ½).',
          M('inception_v1/aux', 'early_aux_share') - 0.5, unit='share − ½', expects=EFFECT),
    Claim('v1_side_heads_speed_convergence', 'GoogLeNet §5 (implied)',
          'With the side heads the network reaches 60% training accuracy in at least 10% fewer steps.',
          _speedup('inception_v1'), unit='fraction of steps', expects=EFFECT, margin=0.1),
    Claim('v1_side_heads_improve_accuracy', 'GoogLeNet §5 ("about 0.5%")',
          'The side heads raise the final test top-1.',
          M('inception_v1/aux', 'test_top1') - M('inception_v1/no_aux', 'test_top1'), unit='points',
          expects=EFFECT),
    Claim('v1_side_heads_regularise', 'GoogLeNet §5 ("additional regularization")',
          'The side heads narrow the gap between training and test top-1.',
          M('inception_v1/no_aux', 'gap') - M('inception_v1/aux', 'gap'), unit='points', expects=EFFECT),
    # The hypothesis: BatchNorm is why the papers disagree (BN-GoogLeNet against the paper's).
    Claim('bn_keeps_main_gradient', 'hypothesis',
          'BN keeps the main head\'s gradient from fading: early main decay is less negative with BN.',
          M('googlenet/no_aux', 'early_main_decay') - M('inception_v1/no_aux', 'early_main_decay'),
          unit='log10', expects=EFFECT),
    Claim('bn_lowers_side_heads_share', 'hypothesis',
          'With BN the side heads carry a smaller share of the lower blocks\' early gradient.',
          M('inception_v1/aux', 'early_aux_share') - M('googlenet/aux', 'early_aux_share'), unit='share',
          expects=EFFECT),
    Claim('bn_removes_speedup', 'hypothesis',
          'The side heads\' speed-up to 60% training accuracy is smaller with BN than without.',
          _speedup('inception_v1') - _speedup('googlenet'), unit='fraction of steps', expects=EFFECT),
    Claim('googlenet_no_early_speedup', 'Rethinking §4, on BN-GoogLeNet',
          'With BN the side heads do not speed up early training: they save less than 10% of the steps to '
          '60% training accuracy.',
          _speedup('googlenet'), unit='fraction of steps', expects=NO_EFFECT, margin=0.1),
    # Rethinking §4 and Table 3, on Inception-v3.
    Claim('v3_no_early_speedup', 'Rethinking §4',
          'The side head "did not result in improved convergence early in the training": it saves less than '
          '10% of the steps to 60% training accuracy.',
          _speedup('inception_v3'), unit='fraction of steps', expects=NO_EFFECT, margin=0.1),
    Claim('v3_higher_plateau', 'Rethinking §4',
          'With the side head the network reaches "a slightly higher plateau": a higher final test top-1.',
          M('inception_v3/aux', 'test_top1') - M('inception_v3/no_aux', 'test_top1'), unit='points',
          expects=EFFECT),
    Claim('v3_side_head_regularises', 'Rethinking §4',
          'The side head acts as a regulariser: it narrows the gap between training and test top-1.',
          M('inception_v3/no_aux', 'gap') - M('inception_v3/aux', 'gap'), unit='points', expects=EFFECT),
    Claim('v3_bn_auxiliary', 'Rethinking Table 3 (21.6 → 21.2% error)',
          'BN in the side head (BN-auxiliary) raises the final test top-1 over the plain side head.',
          M('inception_v3/bn_aux', 'test_top1') - M('inception_v3/aux', 'test_top1'), unit='points',
          expects=EFFECT),
)


def get_study(scale: str = 'full', data_dir: str = '') -> Study:
  """The study at `scale` ('full', 'smoke' or 'imagenet'); `data_dir`: where the dataset's files are ('':
  where it is installed: Debian's Fashion-MNIST)."""
  if scale not in SCALES:
    raise ValueError(f'unknown scale {scale!r} for study {NAME}; valid: {", ".join(SCALES)}')
  b = SCALES[scale]
  conditions = (
      Condition('inception_v1/no_aux', _googlenet('inception_v1', False, b, data_dir),
                'GoogLeNet as published (no BN, LRN), side heads off', 'inception_v1 (no BN)'),
      Condition('inception_v1/aux', _googlenet('inception_v1', True, b, data_dir),
                'the same with its two side heads (weight 0.3)', 'inception_v1 (no BN)'),
      Condition('googlenet/no_aux', _googlenet('googlenet', False, b, data_dir),
                "torchvision's BN-GoogLeNet, side heads off", 'googlenet (BN)'),
      Condition('googlenet/aux', _googlenet('googlenet', True, b, data_dir),
                'the same with its two side heads (weight 0.3)', 'googlenet (BN)'),
      Condition('inception_v3/no_aux', _v3(False, False, b, data_dir), 'Inception-v3, side head off',
                'inception_v3'),
      Condition('inception_v3/aux', _v3(True, False, b, data_dir),
                'side head on (weight 0.4), no BN in its FC layer', 'inception_v3'),
      Condition('inception_v3/bn_aux', _v3(True, True, b, data_dir), 'side head with BN (BN-auxiliary)',
                'inception_v3'),
  )
  command = f'python -m experiments.study --study={NAME} --workdir=DIR' + (
      f' --scale={scale}' if scale != 'full' else '')
  return Study(name=NAME, question=__doc__.split('\n\n')[2].replace('\n', ' '), conditions=conditions,
               seeds=b.seeds, claims=CLAIMS, probe_every=b.probe_every, thresholds=THRESHOLDS,
               early_fraction=0.25, scale=scale, command=command)
