"""Trains a preset once per seed and reports its final metrics over the seeds.

    python -m experiments.seeds --config=v3:fashion_mnist --seeds=3 --workdir=DIR
    python -m experiments.seeds --config=v3 --seeds=0,1,2 --workdir=DIR --config.total_steps=1000

Takes every flag of `experiments.imagenet` (presets, --config.KEY overrides) and `--seeds`: a count N
(seeds 0..N-1) or a list. Seed s trains in DIR/seed_s/; the command resumes: finished seeds are read back,
an interrupted one continues from its checkpoint. Seeds after the first reuse its compiled steps, so
their wall times leave compilation out. Prints a table (median, mean ± sd, min, max, spread, and
every seed's value) with the machine's measured speed beside the wall times (cli.machine_speed) and,
last, one JSON line; writes both to DIR/seeds.md and DIR/seeds.json.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import json
import os

from absl import flags

from experiments import cli

cli.training_flags()

_SEEDS = flags.DEFINE_string('seeds', '3', 'a count N (seeds 0..N-1) or a comma-separated list of seeds')


def main(argv):
  del argv
  cli.enable_compilation_cache()
  from inception_jax import study
  try:
    chosen = study.parse_seeds(_SEEDS.value)
  except ValueError as e:
    cli.fail(e)
  config, workdir = cli.config(), cli.workdir()
  with cli.training_errors():  # TensorFlow loads with training: after the checks above
    # One unnamed condition: seed s trains in DIR/seed_s/.
    one = study.Study(name='seeds', question='', conditions=(study.Condition('', config),),
                      seeds=tuple(chosen))
    ran = study.run(one, workdir)
  results = [ran[('', s)] for s in chosen]
  summary = study.summarize(results)
  text = study.table(summary, chosen)
  # wall_s is read beside what the machine computes (a shared or throttled one shows here).
  machine = cli.machine_speed()
  text += f'\n\nwall_s measured with: {machine}'
  record = {'config': config.get('model'), 'seeds': chosen, 'summary': summary, 'machine': machine}
  with open(os.path.join(workdir, 'seeds.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(workdir, 'seeds.json'), 'w') as f:
    json.dump(record, f, indent=2)
  print(text, flush=True)
  print(json.dumps(record), flush=True)


if __name__ == '__main__':
  cli.run(main, parser=cli.parse_training)
