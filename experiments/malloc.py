"""The command-line tools run on tcmalloc where it is installed.

With glibc's malloc, XLA:CPU's step buffers (tens of MB each) are above the mmap threshold: each step
maps them afresh and the kernel zeroes every page on first touch. tcmalloc keeps and reuses them, which
made Inception-v3's 299 px train step a third faster on the CPU (docs/performance.md). A library chosen with
LD_PRELOAD must be there when the process starts, so `restart_on_tcmalloc()` replaces the process with
the same command line with the library preloaded. It is called first thing by the long-running tools,
before they import JAX or TensorFlow, so the restart costs only the interpreter's start.

    INCEPTION_JAX_MALLOC=auto      (default) tcmalloc if installed, else the system's malloc
    INCEPTION_JAX_MALLOC=tcmalloc  tcmalloc, and an error if it is not installed
    INCEPTION_JAX_MALLOC=system    the system's malloc (glibc)

A malloc preloaded already (tcmalloc or jemalloc) is kept. Debian/Ubuntu: libtcmalloc-minimal4
(scripts/setup.sh installs it).
"""

import ctypes.util
import os
import sys

VARIABLE = 'INCEPTION_JAX_MALLOC'
CHOICES = ('auto', 'tcmalloc', 'system')
# Set in the restarted process: it never restarts again, even where the preload did not take.
_RESTARTED = '_INCEPTION_JAX_MALLOC_RESTARTED'


def in_use() -> str:
  """The malloc this process runs on: 'tcmalloc' or 'jemalloc' when preloaded, else 'system'."""
  try:
    with open('/proc/self/maps') as f:
      maps = f.read()
  except OSError:
    return 'unknown'
  return next((name for name in ('tcmalloc', 'jemalloc') if name in maps), 'system')


def find_tcmalloc() -> str | None:
  """The shared library's name as the dynamic linker finds it, or None. The minimal build: the full one
  (gperftools' profilers) reports every allocation over 1 GiB on stderr, and a large batch makes many."""
  return ctypes.util.find_library('tcmalloc_minimal')


def restart_command(environ: dict[str, str]) -> tuple[str, list[str], dict[str, str]] | None:
  """(executable, argv, environment) that runs this command again on tcmalloc, or None where this
  process stays as it is. Exits with one line (status 2) for a bad INCEPTION_JAX_MALLOC."""
  choice = environ.get(VARIABLE, '') or 'auto'
  if choice not in CHOICES:
    print(f'error: {VARIABLE}={choice!r} is not one of {", ".join(CHOICES)}', file=sys.stderr)
    sys.exit(2)
  if choice == 'system' or _RESTARTED in environ or in_use() in ('tcmalloc', 'jemalloc'):
    return None
  library = find_tcmalloc() if sys.platform.startswith('linux') else None
  if library is None:
    if choice == 'tcmalloc':
      print(f'error: {VARIABLE}=tcmalloc but no tcmalloc library is installed (Debian/Ubuntu: apt-get '
            f'install libtcmalloc-minimal4); {VARIABLE}=system runs on the system malloc', file=sys.stderr)
      sys.exit(2)
    return None
  preload = ' '.join(filter(None, [library, environ.get('LD_PRELOAD', '')]))
  env = {**environ, 'LD_PRELOAD': preload, _RESTARTED: '1'}
  # orig_argv keeps the interpreter's own options (-m, -X, -W ...); argv[0] is the running interpreter,
  # not the name it was started by, so a virtual environment stays the one in use.
  return sys.executable, [sys.executable, *sys.orig_argv[1:]], env


def restart_on_tcmalloc() -> None:
  """Replaces this process by the same command on tcmalloc, where INCEPTION_JAX_MALLOC allows it."""
  command = restart_command(dict(os.environ))
  if command is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(*command)
