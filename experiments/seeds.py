"""Trains a preset once per seed and reports its final metrics over the seeds.

    python -m experiments.seeds --config=v3:fashion_mnist --seeds=3 --workdir=DIR
    python -m experiments.seeds --config=v3 --seeds=0,1,2 --workdir=DIR --config.total_steps=1000

Takes every flag of `experiments.imagenet` (presets, --config.KEY overrides) and `--seeds`: a count N
(seeds 0..N-1) or a list. Seed s trains in DIR/seed_s/; the command resumes: finished seeds are read back,
an interrupted one continues from its checkpoint. Prints a table (median, mean ± sd, min, max, spread, and
every seed's value) with the machine's measured speed beside the wall times (imagenet.machine_speed) and,
last, one JSON line; writes both to DIR/seeds.md and DIR/seeds.json.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import json
import os
import sys

from absl import flags

from experiments import cli, imagenet

_SEEDS = flags.DEFINE_string('seeds', '3', 'a count N (seeds 0..N-1) or a comma-separated list of seeds')


def main(argv):
  del argv
  imagenet.enable_compilation_cache()
  from inception_jax import seeds
  try:
    chosen = seeds.parse_seeds(_SEEDS.value)
  except ValueError as e:
    cli.fail(e)
  from inception_jax import train  # after flag parsing and the check above: TensorFlow loads with it
  config, workdir = imagenet._CONFIG.value, imagenet.require_workdir()
  try:
    imagenet._command_line_durations_win(config, sys.argv)
    results = seeds.run(config, workdir, chosen, train.train_and_evaluate)
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(imagenet.EXIT_PREEMPTED)
  except FloatingPointError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(imagenet.EXIT_NONFINITE)
  except (ValueError, OSError) as e:
    cli.fail(e)
  summary = seeds.summarize(results)
  text = seeds.table(summary, chosen)
  # wall_s is read beside what the machine computes (a shared or throttled one shows here).
  machine = imagenet.machine_speed()
  text += f'\n\nwall_s measured with: {machine}'
  record = {'config': config.get('model'), 'seeds': chosen, 'summary': summary, 'machine': machine}
  with open(os.path.join(workdir, 'seeds.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(workdir, 'seeds.json'), 'w') as f:
    json.dump(record, f, indent=2)
  print(text, flush=True)
  print(json.dumps(record), flush=True)


if __name__ == '__main__':
  cli.run(main, parser=imagenet.parse)
