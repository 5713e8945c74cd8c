"""Trains and evaluates a model from a preset.

    python -m experiments.imagenet --config=v3 --workdir=DIR [--config.batch_size=512 ...]
    python -m experiments.imagenet --config=v3:fashion_mnist --workdir=DIR
    python -m experiments.imagenet --config=experiments/configs/v3.py:fashion_mnist --workdir=DIR

`--config` takes a preset name from experiments/configs (text after a colon is the preset's argument) or a
path to a config file. Any key can be overridden with --config.KEY=VALUE; an unknown key is an error.
"""

if __name__ == '__main__':  # first, before JAX and TensorFlow load: this may replace the process
  from experiments import malloc
  malloc.restart_on_tcmalloc()

import difflib
import importlib.util
import os
import re
import sys
import time

from absl import flags
import ml_collections
from ml_collections import config_flags

from experiments import cli
from experiments.configs import base

CONFIGS = os.path.join(os.path.dirname(__file__), 'configs')


def parse(argv) -> list[str]:
  """The flag parser of the tools that train a preset (`cli.run(main, parser=imagenet.parse)`): a preset
  name becomes its file, and a bad preset, override or flag is one line, not a traceback from inside absl
  or ml_collections."""
  argv = _preset_path(list(argv))
  try:
    positional = flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(_config_file_error(e) or _wrong_type(e, argv) or str(e))
  except (AttributeError, KeyError, IndexError) as e:  # ml_collections: an override of a missing key
    cli.fail(_unknown_key(argv) or f'unknown config key ({e})')
  if _CONFIG.value is None:
    cli.fail('--config is required: a preset (e.g. --config=v3:fashion_mnist) or a config file')
  if len(positional) > 1:
    cli.fail(f'unexpected argument {positional[1]!r}; settings are flags (--config.KEY=VALUE)')
  return positional


def require_workdir() -> str:
  if not _WORKDIR.value:
    cli.fail('--workdir is required: the directory for checkpoints, logs and metrics')
  return _WORKDIR.value


def _config_file_error(e: Exception) -> str | None:
  """What the config file's `get_config` raised (e.g. `--config=v1:typo`): absl reports it inside a
  message that holds config_flags' whole traceback."""
  while e is not None:
    if str(e).startswith('Error whilst parsing config file') and e.__context__ is not None:
      return str(e.__context__)
    e = e.__context__
  return None


_KINDS = {int: 'an integer', float: 'a number', bool: 'True or False', str: 'a string', tuple: 'a tuple'}


def _wrong_type(e: Exception, argv: list[str]) -> str | None:
  """`--config.KEY=VALUE` where VALUE is not of KEY's type: says the type (absl passes on what int() or
  float() said)."""
  match = re.match(r'flag --config\.([\w.]+)=(.*?): ', str(e))
  config = _config(argv) if match else None
  if config is None:
    return None
  key, value = match.groups()
  *parents, leaf = key.split('.')
  for parent in parents:
    config = config[parent]
  kind = config.get_type(leaf)
  return f'{key} must be {_KINDS.get(kind, kind.__name__)}, got {value!r}'


def _unknown_key(argv: list[str]) -> str | None:
  """The first `--config.KEY` the config lacks, with the nearest key it has. (ml_collections' error names
  only the key's last part.)"""
  config = _config(argv)
  if config is None:
    return None
  keys = list(_keys(config))
  for a in argv:
    key = a[len('--config.'):].split('=')[0] if a.startswith('--config.') else None
    if key and key not in keys:
      near = difflib.get_close_matches(key, keys, 1)
      return (f'unknown config key {key!r}' + (f'; did you mean {near[0]!r}?' if near else '')
              + ' (the keys are those of experiments/configs/base.py and the preset)')
  return None


def _config(argv: list[str]) -> ml_collections.ConfigDict | None:
  """The config `--config` names, loaded afresh to look a key up after ml_collections rejected one."""
  value = next((a[len('--config='):] for a in argv if a.startswith('--config=')), None)
  if value is None:
    return None
  path, sep, arg = value.partition(':')
  spec = importlib.util.spec_from_file_location('config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def _keys(config, prefix: str = ''):
  for key, value in config.items():
    yield prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from _keys(value, f'{prefix}{key}.')


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
          cli.fail(f'unknown preset {name!r}; valid presets: {", ".join(presets)} (or a config file)')
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
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100, 'multi-host: seconds without news from a process before the others stop '
    'with an error (a process that died would otherwise leave them waiting)')


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
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                             heartbeat_timeout_seconds=_HEARTBEAT.value)


def main(argv):
  del argv
  if _COORDINATOR.value or _MULTIHOST.value:
    start_distributed()
  cli.enable_compilation_cache()
  workdir = require_workdir()
  from inception_jax import train  # after flag parsing: keeps --help fast
  start = time.perf_counter()
  with cli.training_errors():
    _command_line_durations_win(_CONFIG.value, sys.argv)
    results = train.train_and_evaluate(_CONFIG.value, workdir)
  if results:
    print(f'final test accuracy over all {int(results["eval/count"]):,} examples: '
          f'top-1 {results["eval/top1"]:.2%}, top-5 {results["eval/top5"]:.2%}'
          + (f' (EMA weights: top-1 {results["eval_ema/top1"]:.2%})' if 'eval_ema/top1' in results else ''),
          flush=True)
  print(f'wall time {_minutes(time.perf_counter() - start)} ({cli.machine_speed()})', flush=True)


def _minutes(seconds: float) -> str:
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


if __name__ == '__main__':
  cli.run(main, parser=parse)
