"""Studies, one file each: its conditions (presets and overrides), seeds, budgets ('scales'), probe and the
claims it tests with their criteria. `experiments.study` runs them by name."""

import importlib

NAMES = ('aux_classifiers',)


def get_study(name: str, scale: str = 'full', data_dir: str = ''):
  """The study `name` at `scale`; an unknown name or scale is a ValueError that lists the valid ones."""
  if name not in NAMES:
    raise ValueError(f'unknown study {name!r}; valid: {", ".join(NAMES)}')
  return importlib.import_module(f'experiments.studies.{name}').get_study(scale, data_dir)


def scales(name: str) -> tuple[str, ...]:
  return tuple(importlib.import_module(f'experiments.studies.{name}').SCALES)
