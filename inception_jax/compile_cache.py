"""Compiled steps kept on disk, keyed on what builds them, so that a later run skips tracing too.

JAX's persistent compilation cache (`jax_compilation_cache_dir`) saves XLA's work, but finds its entry
by the lowered program, so every run still traces and lowers first: for Inception-v3's train step that
is about as long as loading the cached executable. Here an entry is found from what the program is
built from, before any tracing:

  * the caller's description of the function (the experiment config and whatever else shapes it),
  * the source of this package, the versions of the libraries that trace it, JAX's settings and the
    XLA flags in the environment,
  * the arguments' tree, shapes, dtypes and shardings, and the devices (and, on the CPU, the
    instruction-set extensions the executable may use).

A change to any of these is a miss. An entry that fails to load is compiled afresh and replaced; one
that cannot be written leaves the compiled step in use. Only single-process runs use it.

Entries are pickles (JAX's serialised executable and its argument trees), and unpickling runs whatever
the file says. So an entry is loaded only from a directory that this user owns and no one else can write,
and only when the entry itself is such a file; otherwise one warning says why and the step is compiled
(and nothing is written there). Which directory that is, is the user's choice (`$JAX_COMPILATION_CACHE_DIR`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import platform
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
from jax.experimental import serialize_executable

# Libraries whose code runs while the step is traced; a new version can change the program.
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'ml-collections', 'chex')
# Newest entries kept per directory (a v3 train step is ~10 MB); older ones are removed after a write.
MAX_ENTRIES = 16


@functools.cache
def source_digest() -> str:
  """SHA-256 of every Python file of this package (paths and contents)."""
  root = Path(__file__).resolve().parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob('*.py')):
    digest.update(str(path.relative_to(root)).encode() + b'\0' + path.read_bytes() + b'\0')
  return digest.hexdigest()


@functools.cache
def _cpu_features() -> str:
  """The CPU's model and feature flags: an executable compiled for AVX-512 must not load without it."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor()


def enable_persistent_cache(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache (for programs that take over half a second to compile)
  in `directory`, else `$JAX_COMPILATION_CACHE_DIR`, else `~/.cache/inception_jax/jax`; returns it.

  The command-line tools call this, so that a resumed or repeated run skips XLA's compiler."""
  directory = (directory or os.environ.get('JAX_COMPILATION_CACHE_DIR')
               or os.path.join(os.path.expanduser('~'), '.cache', 'inception_jax', 'jax'))
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def _version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return ''


def cache_key(description: str, args: Any, devices: Sequence[jax.Device]) -> str:
  """The entry name for compiling a function described by `description` for `args` on `devices`."""
  leaves, treedef = jax.tree.flatten(args)
  parts = {
      'description': description,
      'source': source_digest(),
      'versions': {name: _version(name) for name in LIBRARIES},
      'python': sys.version,
      'jax_config': sorted((k, repr(v)) for k, v in jax.config.values.items()),
      'env': {k: os.environ.get(k, '') for k in ('XLA_FLAGS', 'LIBTPU_INIT_ARGS')},
      'devices': [(d.id, d.platform, d.device_kind, d.process_index) for d in devices],
      'host': _cpu_features() if devices[0].platform == 'cpu' else '',
      'tree': str(treedef),
      'args': [(tuple(x.shape), str(x.dtype), repr(getattr(x, 'sharding', None))) for x in leaves],
  }
  return hashlib.sha256(json.dumps(parts, default=repr).encode()).hexdigest()[:32]


def load_or_compile(jitted, args: tuple, *, description: str, directory: str,
                    devices: Sequence[jax.Device]) -> tuple[jax.stages.Compiled, bool]:
  """`jitted` compiled for `args`, from `directory` when an entry matches; returns (compiled, loaded).

  Args:
    jitted: a `jax.jit` function.
    args: its positional arguments (arrays or `jax.ShapeDtypeStruct`s with shardings).
    description: everything besides the package's code that decides the program, e.g. the config as
      JSON and the function's role; two different programs must not share it.
    directory: where entries live (created if missing).
    devices: the devices the program runs on (its mesh's).
  """
  devices = list(devices)
  if jax.process_count() > 1:
    return jitted.lower(*args).compile(), False
  os.makedirs(directory, mode=0o700, exist_ok=True)
  path = os.path.join(directory, cache_key(description, args, devices) + '.pkl')
  unsafe = untrusted(directory) or (untrusted(path) if os.path.exists(path) else None)
  if unsafe:
    print(f'compile cache: not using {directory}: {unsafe}; compiling instead', file=sys.stderr, flush=True)
    return jitted.lower(*args).compile(), False
  if os.path.exists(path):
    try:
      with open(path, 'rb') as f:
        payload, in_tree, out_tree = pickle.load(f)
      compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                           execution_devices=devices)
      os.utime(path)  # recently used: kept by the trimming below
      return compiled, True
    except Exception as e:  # noqa: BLE001 — any unreadable entry is recompiled
      print(f'compile cache: {path} did not load ({_one_line(e)}); compiling afresh',
            file=sys.stderr, flush=True)
  compiled = jitted.lower(*args).compile()
  temporary = None
  try:
    blob = pickle.dumps(serialize_executable.serialize(compiled))
    with tempfile.NamedTemporaryFile(dir=directory, suffix='.tmp', delete=False) as f:
      temporary = f.name
      f.write(blob)
    os.replace(temporary, path)  # readers see a whole entry or none
    temporary = None
    _trim(directory)
  except Exception as e:  # noqa: BLE001 — the step is compiled; only its reuse is lost
    print(f'compile cache: not saved to {directory} ({_one_line(e)})', file=sys.stderr, flush=True)
  finally:
    if temporary is not None:
      Path(temporary).unlink(missing_ok=True)
  return compiled, False


def untrusted(path: str) -> str | None:
  """Why a cache file or directory could hold code someone else put there (None when it cannot): it
  belongs to another user, or a group or other users may write it."""
  info = os.stat(path)
  if info.st_uid != os.getuid():
    return f'{path} belongs to another user (uid {info.st_uid})'
  if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
    return f'{path} is writable by its group or by other users (mode {stat.filemode(info.st_mode)})'
  return None


def _one_line(e: Exception) -> str:
  return f'{type(e).__name__}: ' + (str(e).strip().splitlines() or [''])[0]


def _trim(directory: str) -> None:
  entries = sorted(Path(directory).glob('*.pkl'), key=lambda p: p.stat().st_mtime, reverse=True)
  for old in entries[MAX_ENTRIES:]:
    old.unlink(missing_ok=True)
