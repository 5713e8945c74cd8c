"""What the command-line tools share: absl flags, the training config on the command line, and bad input
reported as one line with exit status 2.

Each tool defines its flags at module level and ends with `cli.run(main)`; a tool that trains a preset
also calls `training_flags()` and parses with `parse_training` (`--config`, `--config.KEY=VALUE`,
`--workdir`, the multi-host flags), then reads `config()` and `workdir()`. absl's own parser reports a bad
flag over several lines with usage hints and exit status 1; here it is `error: ...` and status 2, as for
any other bad input.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags, logging


# Every tool that compiles keeps its programs in JAX's persistent cache unless told not to; one flag name.
_COMPILATION_CACHE = flags.DEFINE_bool(
    'compilation_cache', True, 'keep compiled programs in $JAX_COMPILATION_CACHE_DIR (default '
    '~/.cache/inception_jax/jax), so that a resumed or repeated run skips XLA\'s compiler')


def enable_compilation_cache() -> str | None:
  """Turns JAX's persistent compilation cache on unless --nocompilation_cache; returns its directory."""
  if not _COMPILATION_CACHE.value:
    return None
  from inception_jax import compile_cache
  return compile_cache.enable_persistent_cache()


# Exit statuses besides 0 (finished) and 2 (bad input): a non-finite loss or gradient stopped the run; a
# preemption notice (SIGTERM) stopped it after a checkpoint, so running the command again resumes it
# (75 is sysexits' EX_TEMPFAIL: try again).
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 75


@contextlib.contextmanager
def training_errors():
  """How a training tool ends when its run does not finish: a preemption with status 75 (its message
  says the same command resumes), a NaN or infinity with 3, bad input (a value the code rejects, a path
  the system refuses) as one line with 2. A traceback would add nothing the user can act on."""
  from inception_jax import train
  try:
    yield
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(EXIT_PREEMPTED)
  except FloatingPointError as e:  # the run diverged: not bad input, and a wrapper may want to tell
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(EXIT_NONFINITE)
  except (ValueError, OSError) as e:
    fail(e)


def machine_speed() -> str:
  """What the devices can compute, to read a wall time by: on the CPU a 2048² float32 matrix product
  measured now (a shared or throttled machine shows here), elsewhere the data sheet's peak."""
  from inception_jax import hardware
  flops, where = hardware.peak_flops('float32')
  if where == 'measured matrix product':
    return f'2048² float32 matrix product on this machine: {flops / 1e9:,.0f} GFLOP/s'
  return f'{flops / 1e12:,.0f} TFLOP/s float32 peak, {where}'


def fail(message) -> NoReturn:
  """Bad input: one line on stderr, exit status 2. (A library's message over several lines is joined.)"""
  line = ' '.join(part.strip() for part in str(message).splitlines() if part.strip())
  print(f'error: {line}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse(argv: Sequence[str]) -> list[str]:
  """Parses absl flags from `argv` (program name first); returns the program name and the positional
  arguments. A flag absl rejects (unknown, wrong type, not an allowed value) is one error line."""
  try:
    return flags.FLAGS(list(argv))
  except flags.UnrecognizedFlagError as e:
    near = difflib.get_close_matches(e.flagname, list(flags.FLAGS), 1)
    fail(f'unknown flag --{e.flagname}' + (f'; did you mean --{near[0]}?' if near else '')
         + ' (--help lists the flags)')
  except flags.Error as e:
    fail(e)


# --- the training config --------------------------------------------------------------------------------

_TRAINING: dict = {}   # the parsed config and the keys the command line set (`parse_training`)


def training_flags() -> None:
  """Defines the flags of the tools that train a preset (once, whichever of them imports first)."""
  if 'workdir' in flags.FLAGS:
    return
  flags.DEFINE_string('config', None, 'a preset of experiments/configs (NAME, or NAME:ARG) or a config file '
                      '(PATH, or PATH:ARG); --config.KEY=VALUE sets any key of it')
  flags.DEFINE_string('workdir', None, 'directory for checkpoints, logs and metrics')
  flags.DEFINE_string('coordinator_address', None,
                      'multi-host: host:port of process 0; with --num_processes and --process_id starts '
                      'jax.distributed (on Cloud TPU and SLURM, --multihost alone lets JAX find them)')
  flags.DEFINE_integer('num_processes', None, 'multi-host: number of processes')
  flags.DEFINE_integer('process_id', None, 'multi-host: this process, 0..num_processes-1')
  flags.DEFINE_bool('multihost', False, 'initialise jax.distributed from the environment')
  flags.DEFINE_integer('heartbeat_timeout_s', 100, 'multi-host: seconds without news from a process before '
                       'the others stop with an error (a process that died would otherwise leave them waiting)')


def parse_training(argv: Sequence[str]) -> list[str]:
  """`parse` for the tools that train a preset: `--config.KEY=VALUE` overrides are taken out of `argv` and
  applied to the config `--config` names, each value read as its key's type; a bad preset, key or value
  is one error line."""
  texts, rest = {}, []
  for a in argv:
    if a.startswith('--config.'):
      key, sep, text = a[len('--config.'):].partition('=')
      if not sep:
        fail(f'{a}: give a value, --config.{key}=VALUE')
      texts[key] = text
    else:
      rest.append(a)
  positional = parse(rest)
  if not flags.FLAGS.config:
    fail('--config is required: a preset (e.g. --config=v3:fashion_mnist) or a config file')
  if len(positional) > 1:
    fail(f'unexpected argument {positional[1]!r}; settings are flags (--config.KEY=VALUE)')
  from experiments import configs
  try:
    config = configs.set_from_text(configs.load(flags.FLAGS.config), texts)
  except ValueError as e:
    fail(e)
  config.lock()   # a mistyped key set later in code is an error too
  _TRAINING.update(config=config, keys=set(texts))
  return positional


def config():
  """The training config of the command line (after `parse_training`)."""
  return _TRAINING['config']


def config_keys() -> set[str]:
  """The config keys the command line set (`--config.batch_size=8` -> 'batch_size')."""
  return _TRAINING['keys']


def workdir() -> str:
  if not flags.FLAGS.workdir:
    fail('--workdir is required: the directory for checkpoints, logs and metrics')
  return flags.FLAGS.workdir


def start_distributed() -> None:
  """Joins the processes of a multi-host run (--coordinator_address/--num_processes/--process_id, or the
  environment with --multihost); does nothing without them. CPU devices exchange data over gloo (TCP), so
  N processes on one machine behave like N hosts."""
  f = flags.FLAGS
  if not (f.coordinator_address or f.multihost):
    return
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                             heartbeat_timeout_seconds=f.heartbeat_timeout_s)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
        parser: Callable[[Sequence[str]], list[str]] = parse):
  """Runs a tool's `main(positional_args)`. Without `argv`: the process's command line, through absl's
  `app.run` (exit status from `main`). With `argv` (tests): every flag back to its default, `argv` parsed,
  and `main`'s return value returned."""
  if argv is None:
    app.run(_quiet(main), flags_parser=parser)
  flags.FLAGS.unparse_flags()
  return _quiet(main)(parser(argv))


def _quiet(main):
  """absl logs at WARNING unless --verbosity is given: orbax logs every save at INFO, JAX each backend it
  does not find; the tools' own lines suffice."""
  def quiet_main(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    return main(argv)
  return quiet_main
