"""inception_jax.compile_cache: compiled steps found on disk before any tracing, keyed on what builds them."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax import compile_cache

DEVICES = jax.devices()[:1]


def counting_step():
  """A jitted step and a list that grows each time JAX traces it."""
  traces = []

  def step(state, x):
    traces.append(1)
    return {'w': state['w'] - 0.1 * jnp.tanh(x).sum(0)}, jnp.mean(x ** 2)

  return jax.jit(step, donate_argnums=(0,)), traces


def args(n=3):
  return {'w': jnp.ones((n,))}, jnp.arange(2.0 * n).reshape(2, n)


def load(directory, description='step', arguments=None):
  step, traces = counting_step()
  compiled, loaded = compile_cache.load_or_compile(step, arguments or args(), description=description,
                                                   directory=str(directory), devices=DEVICES)
  return compiled, loaded, traces


def test_a_hit_skips_tracing_and_computes_what_the_compiled_step_does(tmp_path):
  first, loaded, traces = load(tmp_path)
  assert not loaded and traces == [1] and len(list(tmp_path.glob('*.pkl'))) == 1
  second, loaded, traces = load(tmp_path)
  assert loaded and traces == []
  (w1, loss1), (w2, loss2) = first(*args()), second(*args())
  np.testing.assert_array_equal(w1['w'], w2['w'])
  assert float(loss1) == float(loss2) == pytest.approx(np.mean(np.arange(6.0) ** 2))


def test_what_builds_the_program_is_in_the_key(monkeypatch):
  base = compile_cache.cache_key('step', args(), DEVICES)
  assert compile_cache.cache_key('step', args(), DEVICES) == base
  assert compile_cache.cache_key('another config', args(), DEVICES) != base
  assert compile_cache.cache_key('step', args(4), DEVICES) != base                       # shapes
  assert compile_cache.cache_key('step', jax.tree.map(lambda a: a.astype(jnp.bfloat16), args()),
                                 DEVICES) != base                                         # dtypes
  with monkeypatch.context() as m:
    m.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_enable_fast_math=true')
    assert compile_cache.cache_key('step', args(), DEVICES) != base                       # XLA flags
  with monkeypatch.context() as m:
    m.setattr(compile_cache, 'source_digest', lambda: 'edited')
    assert compile_cache.cache_key('step', args(), DEVICES) != base                       # our code
  assert compile_cache.cache_key('step', args(), DEVICES) == base


def test_the_digest_reads_every_source_file_the_train_step_is_built_from(monkeypatch):
  read = []
  real = compile_cache.Path.read_bytes
  monkeypatch.setattr(compile_cache.Path, 'read_bytes', lambda path: read.append(path) or real(path))
  compile_cache.source_digest.cache_clear()
  try:
    digest = compile_cache.source_digest()
  finally:
    compile_cache.source_digest.cache_clear()
  root = compile_cache.Path(compile_cache.__file__).resolve().parent
  names = {str(path.relative_to(root)) for path in read}
  assert {'train.py', 'optim.py', 'losses.py', 'models/layers.py', 'xla_cpu.py', 'kernels.py',
          'models/inception_v3.py'} <= names
  assert names == {str(path.relative_to(root)) for path in root.rglob('*.py')}
  assert digest == compile_cache.source_digest() and len(digest) == 64


def test_a_broken_entry_is_compiled_afresh_and_replaced(tmp_path, capsys):
  load(tmp_path)
  entry, = tmp_path.glob('*.pkl')
  entry.write_bytes(b'not a pickle')
  compiled, loaded, traces = load(tmp_path)
  assert not loaded and traces == [1]
  message = capsys.readouterr().err.strip().splitlines()
  assert len(message) == 1 and 'did not load' in message[0] and 'compiling afresh' in message[0]
  assert load(tmp_path)[1]   # the rewritten entry loads
  assert not list(tmp_path.glob('*.tmp'))


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch):
  monkeypatch.setattr(compile_cache, 'MAX_ENTRIES', 2)
  for n in (2, 3, 4):
    load(tmp_path, arguments=args(n))
    entry = max(tmp_path.glob('*.pkl'), key=os.path.getmtime)
    os.utime(entry, (n, n))   # distinct ages whatever the clock's resolution
  assert len(list(tmp_path.glob('*.pkl'))) == 2
  assert not load(tmp_path, arguments=args(2))[1]   # the oldest was removed
  assert load(tmp_path, arguments=args(4))[1]


@pytest.mark.parametrize('what', ['directory', 'entry'])
def test_an_entry_others_could_have_written_is_never_unpickled(tmp_path, capsys, monkeypatch, what):
  load(tmp_path)
  entry, = tmp_path.glob('*.pkl')
  os.chmod(tmp_path if what == 'directory' else entry, 0o777 if what == 'directory' else 0o666)
  loads = []
  monkeypatch.setattr(compile_cache.pickle, 'load', lambda f: loads.append(f))
  compiled, loaded, traces = load(tmp_path)
  assert not loaded and traces == [1] and loads == []
  message = capsys.readouterr().err.strip().splitlines()
  assert len(message) == 1 and 'writable by its group or by other users' in message[0]
  assert 'compiling instead' in message[0]
  state, x = args()
  np.testing.assert_allclose(compiled(state, x)[1], np.mean(np.asarray(x) ** 2))   # the compiled step works


def test_an_entry_of_another_user_is_never_unpickled(tmp_path, capsys, monkeypatch):
  load(tmp_path)
  monkeypatch.setattr(compile_cache.os, 'getuid', lambda: os.stat(tmp_path).st_uid + 1)  # someone else now
  _, loaded, traces = load(tmp_path)
  assert not loaded and traces == [1]
  assert 'belongs to another user' in capsys.readouterr().err
