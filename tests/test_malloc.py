"""experiments.malloc: the command-line tools restart themselves on tcmalloc, unless told not to."""

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_module
from experiments import malloc

TOOLS = ['imagenet', 'benchmark', 'scaling', 'gradient_flow', 'ablations', 'benchmark_input']

# A stand-in for a tool: restarts like one, then says what it runs on and with which command line.
PROBE = ('from experiments import malloc; malloc.restart_on_tcmalloc(); import json, os, sys; '
         'print(json.dumps([malloc.in_use(), sys.argv[1:], sys.flags.utf8_mode, '
         'os.environ.get("LD_PRELOAD", "")]))')


def _probe(*args, **env):
  clean = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', malloc.VARIABLE)}
  result = subprocess.run([sys.executable, '-X', 'utf8', '-c', PROBE, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**clean, **env})
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout)


def test_tcmalloc_is_installed():
  # scripts/setup.sh installs it (Debian's libtcmalloc-minimal4); without it the tools below run on glibc.
  assert malloc.find_tcmalloc() is not None, 'no tcmalloc library: bash scripts/setup.sh installs it'


def test_a_tool_restarts_on_tcmalloc_with_its_command_line_whole():
  allocator, argv, utf8, preload = _probe('--flag=1', 'two words')
  assert allocator == 'tcmalloc'
  assert argv == ['--flag=1', 'two words']   # the arguments, and the interpreter's own -X option, kept
  assert utf8 == 1
  assert malloc.find_tcmalloc() in preload


def test_a_preload_of_the_users_own_is_kept_after_tcmalloc():
  # Any library already preloaded stays (libc's own, so that it loads anywhere).
  libc = ctypes.util.find_library('c')
  _, _, _, preload = _probe(LD_PRELOAD=libc)
  assert preload.split() == [malloc.find_tcmalloc(), libc]


@pytest.mark.parametrize('choice', ['system', ''])
def test_system_means_the_system_malloc(choice):
  allocator, *_ = _probe(INCEPTION_JAX_MALLOC=choice)
  assert allocator == ('system' if choice == 'system' else 'tcmalloc')   # empty is the default, auto


@pytest.mark.slow
def test_the_benchmark_records_the_malloc_it_ran_on(tmp_path):
  result = run_module('experiments.benchmark', '--model=lenet', '--batch=8', '--size=28', '--steps=1',
                      '--warmup=0', '--json', '--nocompilation_cache', LD_PRELOAD='', INCEPTION_JAX_MALLOC='')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '"allocator": "tcmalloc"' in result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize('tool', TOOLS)
def test_every_long_running_tool_checks_the_choice_before_anything_else(tool):
  result = run_module(f'experiments.{tool}', '--help', INCEPTION_JAX_MALLOC='glibc')
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: INCEPTION_JAX_MALLOC='glibc' is not one of auto, tcmalloc, "
                                   "system")


def test_no_restart_where_a_malloc_is_preloaded_already_or_after_a_restart(monkeypatch):
  monkeypatch.setattr(malloc, 'find_tcmalloc', lambda: 'libtcmalloc_minimal.so.4')
  monkeypatch.setattr(malloc, 'in_use', lambda: 'system')
  assert malloc.restart_command({})[2]['LD_PRELOAD'] == 'libtcmalloc_minimal.so.4'
  # A preload that did not take must not make the restarted process restart again, and again.
  assert malloc.restart_command({malloc._RESTARTED: '1'}) is None
  monkeypatch.setattr(malloc, 'in_use', lambda: 'jemalloc')
  assert malloc.restart_command({}) is None


def test_without_the_library_auto_stays_and_tcmalloc_is_an_error(monkeypatch, capsys):
  monkeypatch.setattr(malloc, 'find_tcmalloc', lambda: None)
  monkeypatch.setattr(malloc, 'in_use', lambda: 'system')
  assert malloc.restart_command({}) is None
  with pytest.raises(SystemExit) as exit_:
    malloc.restart_command({malloc.VARIABLE: 'tcmalloc'})
  assert exit_.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and 'libtcmalloc-minimal4' in lines[0] and 'INCEPTION_JAX_MALLOC=system' in lines[0]
