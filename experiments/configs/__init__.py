"""ml_collections presets: `base.py` holds every key with its default; each preset file derives from it.

`preset('v3:fashion_mnist')` loads a preset by name (text after a colon is its argument), `load` a preset
or a config file as `--config` names it, and `set_from_text` applies `--config.KEY=VALUE` overrides, each
value read as the type its key has.
"""

import ast
import difflib
import importlib
import importlib.util
import os

import ml_collections

from experiments.configs import base

DIRECTORY = os.path.dirname(__file__)


def names() -> list[str]:
  """The presets, sorted."""
  return sorted(f[:-3] for f in os.listdir(DIRECTORY)
                if f.endswith('.py') and f not in ('base.py', '__init__.py'))


def preset(name: str):
  """The config of preset `name` ('v1', 'v3:fashion_mnist', ...)."""
  module, sep, arg = name.partition(':')
  if module not in names():
    raise ValueError(f'unknown preset {module!r}; valid presets: {", ".join(names())}')
  get_config = importlib.import_module(f'experiments.configs.{module}').get_config
  return get_config(arg) if sep else get_config()


def load(spec: str) -> ml_collections.ConfigDict:
  """What `--config=SPEC` names: a preset (`v3`, `v3:fashion_mnist`) or a config file (`path.py[:ARG]`)
  defining `get_config`."""
  name, sep, arg = spec.partition(':')
  if not os.path.exists(name):
    if name not in names():
      raise ValueError(f'unknown preset {name!r}; valid presets: {", ".join(names())} (or a config file)')
    return preset(spec)
  module_spec = importlib.util.spec_from_file_location('config_file', name)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every key of `config`, dotted ('augment.flip'), groups included."""
  out = []
  for key, value in config.items():
    out.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out += keys(value, f'{prefix}{key}.')
  return out


_KINDS = {int: 'an integer', float: 'a number', bool: 'True or False', str: 'a string', tuple: 'a tuple'}
_BOOLS = {'true': True, 'false': False, '1': True, '0': False}


def set_from_text(config: ml_collections.ConfigDict, texts: dict[str, str]) -> ml_collections.ConfigDict:
  """`config` with `texts` ({'dotted.key': 'VALUE'}, as given on the command line) applied: each value read
  as its key's type ('None' clears a key that may be unset), durations as `base.override` sets them. An
  unknown key (with the nearest known one), a group named as a key, or a value of the wrong type is one
  ValueError."""
  known = keys(config)
  values = {}
  for key, text in texts.items():
    if key not in known:
      near = difflib.get_close_matches(key, known, 1)
      raise ValueError(f'unknown config key {key!r}' + (f'; did you mean {near[0]!r}?' if near else '')
                       + ' (the keys are those of experiments/configs/base.py and the preset)')
    *path, leaf = key.split('.')
    node = config
    for part in path:
      node = node[part]
    kind = node.get_type(leaf)
    if issubclass(kind, ml_collections.ConfigDict):
      raise ValueError(f'{key} is a group of keys; set one of them ({key}.KEY=VALUE)')
    values[key] = _typed(key, text, kind)
  return base.override(config, values)


def _typed(key: str, text: str, kind: type):
  if text == 'None':
    return None
  try:
    if kind is bool:
      if text.lower() not in _BOOLS:
        raise ValueError(text)
      return _BOOLS[text.lower()]
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind in (tuple, list):
      value = ast.literal_eval(text)
      if not isinstance(value, (tuple, list)):
        raise ValueError(text)
      return tuple(value)
  except (ValueError, SyntaxError):
    raise ValueError(f'{key} must be {_KINDS.get(kind, kind.__name__)}, got {text!r}') from None
  return text
