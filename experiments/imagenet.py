"""Trains and evaluates a model from a preset.

    python -m experiments.imagenet --config=v3 --workdir=DIR [--config.batch_size=512 ...]
    python -m experiments.imagenet --config=v3:fashion_mnist --workdir=DIR
    python -m experiments.imagenet --config=experiments/configs/v3.py:fashion_mnist --workdir=DIR

`--config` takes a preset name from experiments/configs (text after a colon is the preset's argument) or a
path to a config file. Any key can be overridden with --config.KEY=VALUE; an unknown key is an error, and
a duration given in one unit replaces the preset's in the other (`--config.total_steps=1000` drops
`total_epochs`). The flags and their errors are `experiments.cli`'s, shared with every training tool.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import time

from experiments import cli

cli.training_flags()


def main(argv):
  del argv
  cli.start_distributed()
  cli.enable_compilation_cache()
  workdir = cli.workdir()
  from inception_jax import train  # after flag parsing: keeps --help fast
  start = time.perf_counter()
  with cli.training_errors():
    results = train.train_and_evaluate(cli.config(), workdir)
  if results:
    print(f'final test accuracy over all {int(results["eval/count"]):,} examples: '
          f'top-1 {results["eval/top1"]:.2%}, top-5 {results["eval/top5"]:.2%}'
          + (f' (EMA weights: top-1 {results["eval_ema/top1"]:.2%})' if 'eval_ema/top1' in results else ''),
          flush=True)
  print(f'wall time {_minutes(time.perf_counter() - start)} ({cli.machine_speed()})', flush=True)


def _minutes(seconds: float) -> str:
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


if __name__ == '__main__':
  cli.run(main, parser=cli.parse_training)
