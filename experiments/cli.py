"""What the command-line tools share: absl flags, and bad input reported as one line with exit status 2.

Each tool defines its flags at module level and ends with `cli.run(main)`. absl's own parser reports a bad
flag over several lines with usage hints and exit status 1; here it is `error: ...` and status 2, as for
any other bad input.
"""

from __future__ import annotations

import difflib
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags, logging


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
