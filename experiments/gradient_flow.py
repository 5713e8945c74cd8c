"""Gradient flow through the auxiliary classifiers during a training run.

    python -m experiments.gradient_flow --config=v1 --workdir=DIR --steps=200 --every=20
    python -m experiments.gradient_flow --config=v3 --workdir=DIR --steps=200 --compare

Trains the preset (with `--steps`, a short run on the embedded Fashion-MNIST: `base.short_run`; without it,
the preset as it is) and every `--every` steps records, per head and per block, the norm of the head's
loss gradient, the same for the total loss, and the cosines between them: `DIR/gradient_flow.jsonl`
(step, head, block, grad_norm, cos, cos_to_main, loss, param_norm, param_count), `DIR/blocks.json` (the
trunk and where each side head branches off), a heat map per head (`heatmap_main.png`, ...),
`depth_profile.png`, and `summary.txt` (also printed).

`--compare` runs the same config with the auxiliary heads off, on, and with BN-auxiliary where the model
has that switch, each in `DIR/<variant>/seed_<seed>/` (the study runner's layout: a finished run is read
back), and adds `DIR/compare_depth_profile.png` and `DIR/summary.txt`. Any `--config.KEY=VALUE` override
applies to every run. Several seeds, and claims tested over them: `experiments.study`.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import os

from absl import flags

from experiments import cli
from experiments.configs import base

cli.training_flags()
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


def summarize_run(config, directory: str, overhead: dict | None = None) -> tuple[object, str]:
  """Plots and the summary paragraph (`summary.txt`, printed) of a run's records; returns both."""
  from inception_jax import gradient_flow
  g = gradient_flow.Gradients.read(directory)
  if g is None:
    raise ValueError(f'no measurements: --every={_EVERY.value} is larger than the run')
  gradient_flow.plot(g, directory)
  text = gradient_flow.summary(g, config.aux_weight, overhead, label=f'{config.model} on {config.dataset}, ')
  with open(os.path.join(directory, 'summary.txt'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)
  return g, text


def one_run(config, workdir: str) -> None:
  """One training run with measurements, timed once against a plain gradient step."""
  from inception_jax import gradient_flow, train
  made = {}

  def make_probe(model, spec):
    made['flow'] = gradient_flow.GradientFlow(model, spec, _EVERY.value, workdir,
                                              smoothing=config.label_smoothing, aux_weight=config.aux_weight,
                                              seed=config.seed)
    return made['flow']

  train.train_and_evaluate(config, workdir, make_probe)
  summarize_run(config, workdir, made['flow'].overhead)


def compare(config, workdir: str, same_input_size: bool) -> None:
  """The side heads off, on (and BN-auxiliary), one run each on the study runner: DIR/<variant>/seed_<s>/."""
  from inception_jax import gradient_flow, study
  runs = variants(config, same_input_size)
  conditions = tuple(study.Condition(name, c) for name, c in runs.items())
  comparison = study.Study('gradient_flow', '', conditions, seeds=(config.seed,), probe_every=_EVERY.value)
  study.run(comparison, workdir)
  measured, texts = {}, []
  for name, c in runs.items():
    print(f'--- {name}', flush=True)
    measured[name], text = summarize_run(c, study.run_dir(workdir, name, config.seed))
    texts.append(f'{name}: {text}')
  gradient_flow.plot_comparison(measured, os.path.join(workdir, 'compare_depth_profile.png'))
  with open(os.path.join(workdir, 'summary.txt'), 'w') as f:
    f.write('\n\n'.join(texts) + '\n')


def main(argv):
  del argv
  cli.enable_compilation_cache()
  config, workdir = cli.config(), cli.workdir()
  if _EVERY.value < 1:
    cli.fail(f'--every must be a positive number of steps, got {_EVERY.value}')
  with cli.training_errors():
    if _STEPS.value:
      base.short_run(config, _STEPS.value, _DATASET.value, keep=cli.config_keys())
    if _COMPARE.value:
      compare(config, workdir, same_input_size=bool(_STEPS.value))
    else:
      one_run(config, workdir)


if __name__ == '__main__':
  cli.run(main, parser=cli.parse_training)
