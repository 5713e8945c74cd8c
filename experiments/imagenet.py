"""Trains and evaluates a model from a preset.

    python -m experiments.imagenet --config=v3 --workdir=DIR [--config.batch_size=512 ...]
    python -m experiments.imagenet --config=v3:fashion_mnist --workdir=DIR
    python -m experiments.imagenet --config=experiments/configs/v3.py:fashion_mnist --workdir=DIR

`--config` takes a preset name from experiments/configs (text after a colon is the preset's argument) or a
path to a config file. Any key can be overridden with --config.KEY=VALUE; an unknown key is an error.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.configs import base

CONFIGS = os.path.join(os.path.dirname(__file__), 'configs')


def _fail(message: str) -> None:
  """Bad input: one line on stderr, exit status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse(argv: list[str]) -> list[str]:
  """Parses flags up front so a bad override is one line, not a traceback from inside absl."""
  argv = _preset_path(argv)
  try:
    flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections' word for an override of a missing key
    _fail(f'unknown config key {str(e).strip(chr(34) + chr(39))!r}; the keys are those of '
          'experiments/configs/base.py')
  return argv


def _preset_path(argv: list[str]) -> list[str]:
  """Turns `--config=NAME[:ARG]` into the preset file's path, as config_flags expects a file."""
  out = []
  for a in argv:
    if a.startswith('--config=') and not a.startswith('--config.'):
      value = a[len('--config='):]
      name, sep, arg = value.partition(':')
      if not os.path.exists(name):
        path = os.path.join(CONFIGS, f'{name}.py')
        if not os.path.exists(path) or name in ('base', '__init__'):
          presets = sorted(f[:-3] for f in os.listdir(CONFIGS)
                           if f.endswith('.py') and f not in ('base.py', '__init__.py'))
          _fail(f'unknown preset {name!r}; valid presets: {", ".join(presets)} (or a config file)')
        a = f'--config={path}{sep}{arg}'
    out.append(a)
  return out


_CONFIG = config_flags.DEFINE_config_file('config', None, 'preset name or config file', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'directory for checkpoints, logs and metrics')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'multi-host: host:port of process 0; with --num_processes and --process_id starts jax.distributed '
    '(on Cloud TPU and SLURM, --multihost alone lets JAX find them)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: number of processes')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process, 0..num_processes-1')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'initialise jax.distributed from the environment')
flags.mark_flags_as_required(['config', 'workdir'])


def command_line_keys(argv: list[str]) -> set[str]:
  """Config keys set on the command line (`--config.batch_size=8` -> 'batch_size')."""
  return {a[len('--config.'):].split('=')[0] for a in argv if a.startswith('--config.')}


def _command_line_durations_win(config, argv: list[str]) -> None:
  """A duration given on the command line replaces the preset's, whichever unit the preset used: with
  `--config=v3 --config.total_steps=1000` the preset's `total_epochs` is dropped. (config_flags cannot
  set a float to None from the command line, so without this the two would clash.)"""
  given = command_line_keys(argv)
  with config.unlocked():
    for prefix in base.DURATIONS:
      for unit, other in (('steps', 'epochs'), ('epochs', 'steps')):
        if f'{prefix}_{unit}' in given and f'{prefix}_{other}' not in given:
          config[f'{prefix}_{other}'] = None


def start_distributed() -> None:
  """Joins the processes of a multi-host run (--coordinator_address/--num_processes/--process_id, or the
  environment with --multihost). CPU devices exchange data over gloo (TCP), so N processes on one machine
  behave like N hosts."""
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def quiet_logging() -> None:
  """absl logs at WARNING unless --verbosity is given: orbax logs every save at INFO, JAX each backend it
  does not find; the progress lines suffice."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  del argv
  quiet_logging()
  if _COORDINATOR.value or _MULTIHOST.value:
    start_distributed()
  from inception_jax import train  # after flag parsing: keeps --help fast
  try:
    _command_line_durations_win(_CONFIG.value, sys.argv)
    results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FloatingPointError) as e:
    _fail(str(e))
  if results:
    print(f'final test accuracy over all {int(results["eval/count"]):,} examples: '
          f'top-1 {results["eval/top1"]:.2%}, top-5 {results["eval/top5"]:.2%}'
          + (f' (EMA weights: top-1 {results["eval_ema/top1"]:.2%})' if 'eval_ema/top1' in results else ''),
          flush=True)


if __name__ == '__main__':
  argv = _parse(sys.argv)
  app.run(main, argv=argv[:1])  # flags are parsed already; a second parse would redefine the overrides
