"""ml_collections presets: `base.py` holds every key with its default; each preset file derives from it.

`preset('v3:fashion_mnist')` loads a preset by name (text after a colon is its argument), as
`--config=v3:fashion_mnist` does on the command line.
"""

import importlib
import os

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
