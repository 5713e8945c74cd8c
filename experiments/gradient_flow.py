"""Gradient flow through the auxiliary classifiers during a training run.

    python -m experiments.gradient_flow --config=v1 --workdir=DIR --steps=200 --every=20
    python -m experiments.gradient_flow --config=v3 --workdir=DIR --steps=200 --compare

Trains the preset (with `--steps`, a short run on the embedded Fashion-MNIST: `base.short_run`; without it,
the preset as it is) and every `--every` steps records, per head and per block, the norm of the head's
loss gradient, the same for the total loss, and the cosine to the main head's gradient:
`DIR/gradient_flow.jsonl` (step, head, block, grad_norm, cos_to_main, loss), a heat map per head
(`heatmap_main.png`, ...), `depth_profile.png`, and `summary.txt` (also printed).

`--compare` runs the same config with the auxiliary heads off, on, and with BN-auxiliary where the model
has that switch, each in `DIR/<variant>/`, and adds `DIR/compare_depth_profile.png` and `DIR/summary.txt`.
Any `--config.KEY=VALUE` override applies to every run.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import os
import sys

from absl import flags

from experiments import cli, imagenet
from experiments.configs import base

_EVERY = flags.DEFINE_integer('every', 20, 'measure every this many steps')
_STEPS = flags.DEFINE_integer('steps', 0, 'a short run of this many steps on --dataset (0: the preset as is)')
_DATASET = flags.DEFINE_string('dataset', 'fashion_mnist', 'dataset of the short run')
_COMPARE = flags.DEFINE_bool('compare', False, 'auxiliary heads off / on / BN-auxiliary, one run each')


def variants(config, same_input_size: bool = True) -> dict[str, object]:
  """The comparison runs: the same config without and with auxiliary heads (and with BN-auxiliary).

  With `same_input_size` every run gets the input size the auxiliary heads need, so the runs differ in the
  heads alone.
  """
  from inception_jax import models
  info = models.model_info(config.model)
  if not info.num_aux_heads:
    raise ValueError(f'{info.name} has no auxiliary heads; --compare needs a model with them '
                     '(inception_v1, googlenet, inception_v2, inception_v3, inception_v4, inception_resnet_*)')
  has_aux_bn = 'aux_bn' in models.create_model(info.name).__dataclass_fields__
  runs = {'no_aux': {'aux_logits': False}, 'aux': {'aux_logits': True}}
  if has_aux_bn:
    runs = {'no_aux': {'aux_logits': False}, 'aux': {'aux_logits': True, 'aux_bn': False},
            'bn_aux': {'aux_logits': True, 'aux_bn': True}}
  out = {}
  for name, change in runs.items():
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.aux_logits = change['aux_logits']
      if 'aux_bn' in change:
        c.model_overrides.aux_bn = change['aux_bn']
      if same_input_size:
        c.image_size = max(c.image_size or 0, info.min_aux_input_size)
    out[name] = c
  return out


def study(config, workdir: str) -> tuple[list[dict], object, str]:
  """One training run with measurements; returns its records, block structure and summary paragraph."""
  from inception_jax import gradient_flow, train
  made = {}

  def make_probe(model, spec):
    made['flow'] = gradient_flow.GradientFlow(model, spec, _EVERY.value, workdir,
                                              smoothing=config.label_smoothing, aux_weight=config.aux_weight,
                                              seed=config.seed)
    return made['flow']

  train.train_and_evaluate(config, workdir, make_probe)
  flow = made['flow']
  if not os.path.exists(flow.path):
    raise ValueError(f'no measurements: --every={_EVERY.value} is larger than the run')
  records = gradient_flow.read_records(flow.path)
  gradient_flow.plot(records, flow.structure, workdir)
  text = gradient_flow.summary(records, flow.structure, config.aux_weight, flow.overhead,
                               label=f'{config.model} on {config.dataset}, ')
  with open(os.path.join(workdir, 'summary.txt'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)
  return records, flow.structure, text


def main(argv):
  del argv
  cli.enable_compilation_cache()
  from inception_jax import gradient_flow
  config, workdir = imagenet._CONFIG.value, imagenet.require_workdir()
  try:
    if _EVERY.value < 1:
      raise ValueError(f'--every must be a positive number of steps, got {_EVERY.value}')
    if _STEPS.value:
      base.short_run(config, _STEPS.value, _DATASET.value, keep=imagenet.command_line_keys(sys.argv))
    else:
      imagenet._command_line_durations_win(config, sys.argv)
    if not _COMPARE.value:
      study(config, workdir)
      return
    runs, texts, structure = {}, [], None
    for name, c in variants(config, same_input_size=bool(_STEPS.value)).items():
      print(f'--- {name}', flush=True)
      records, s, text = study(c, os.path.join(workdir, name))
      runs[name], structure = records, (s if c.aux_logits else structure)
      texts.append(f'{name}: {text}')
    gradient_flow.plot_comparison(runs, structure, os.path.join(workdir, 'compare_depth_profile.png'))
    with open(os.path.join(workdir, 'summary.txt'), 'w') as f:
      f.write('\n\n'.join(texts) + '\n')
  except (ValueError, FloatingPointError) as e:
    cli.fail(e)


if __name__ == '__main__':
  cli.run(main, parser=imagenet.parse)
