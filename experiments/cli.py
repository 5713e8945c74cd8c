"""What the command-line tools share: absl flags, and bad input reported as one line with exit status 2.

Each tool defines its flags at module level and ends with `cli.run(main)`. absl's own parser reports a bad
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
