"""The one loop over configs: every condition of a study trained once per seed, resumable run by run.

A run lives in `workdir/<condition>/seed_<s>/` (a study of one unnamed condition, as the seeds tool runs:
`workdir/seed_<s>/`). It counts as finished once its `result.json` is whole; a finished run is read back,
an interrupted one resumes from its newest checkpoint. With `Study.probe_every` the gradient-flow probe
measures every that many steps (`inception_jax.gradient_flow`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from typing import Callable, Sequence

import ml_collections

from inception_jax.study.claims import Claim

RESULT_FILE = 'result.json'


@dataclasses.dataclass(frozen=True)
class Condition:
  """One arm of a study.

  Attributes:
    name: its directory under the study's workdir ('' for a study of one condition).
    config: the training config, complete (presets and the study's overrides applied).
    description: what it is, in a few words (the report's tables).
    group: conditions of one group are compared with each other (one model family): they share the input
      size, data and budget, and the report plots them together.
  """
  name: str
  config: ml_collections.ConfigDict
  description: str = ''
  group: str = ''


@dataclasses.dataclass(frozen=True)
class Study:
  """Conditions × seeds, the probe, and the claims the study tests (each with its criterion, fixed before
  the runs).

  Attributes:
    name: the study's name.
    question: what it asks, in a paragraph (the report's opening).
    conditions: its arms, in report order.
    seeds: every condition trains once per seed; seed s of two conditions shares the data order and the
      initialisation of every layer the two have in common, so claims compare conditions seed by seed.
    claims: what it tests (`claims.Claim`).
    probe_every: steps between gradient-flow measurements (0: no probe).
    thresholds: training accuracies whose first crossing the report gives per run (`steps_to_<T>`).
    early_fraction: the part of a run whose probe measurements count as 'early'.
    scale: the budget's name ('full', 'smoke', ...).
    command: the command that runs it (the report's method section).
  """
  name: str
  question: str
  conditions: tuple[Condition, ...]
  seeds: tuple[int, ...]
  claims: tuple[Claim, ...] = ()
  probe_every: int = 0
  thresholds: tuple[float, ...] = ()
  early_fraction: float = 0.25
  scale: str = 'full'
  command: str = ''

  def __post_init__(self):
    names = [c.name for c in self.conditions]
    if len(set(names)) != len(names):
      raise ValueError(f'study {self.name}: condition names repeat: {names}')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'study {self.name}: seeds must be distinct and at least one, got {self.seeds}')
    for claim in self.claims:
      unknown = sorted(claim.quantity.conditions() - set(names))
      if unknown:
        raise ValueError(f'claim {claim.id} of study {self.name} names conditions it does not have: '
                         f'{", ".join(unknown)}')

  def condition(self, name: str) -> Condition:
    for c in self.conditions:
      if c.name == name:
        return c
    raise ValueError(f'study {self.name} has no condition {name!r}; its conditions: '
                     f'{", ".join(c.name for c in self.conditions)}')

  def select(self, conditions: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> 'Study':
    """The same study with fewer conditions or other seeds (claims that need a dropped condition are
    dropped with it)."""
    kept = tuple(self.condition(n) for n in conditions) if conditions else self.conditions
    names = {c.name for c in kept}
    claims = tuple(c for c in self.claims if c.quantity.conditions() <= names)
    return dataclasses.replace(self, conditions=kept, claims=claims,
                               seeds=tuple(seeds) if seeds else self.seeds)


def parse_seeds(value: str) -> list[int]:
  """'3' -> [0, 1, 2]; '0,5,7' -> [0, 5, 7]. Anything else is one clear error."""
  parts = [p.strip() for p in str(value).split(',')]
  try:
    numbers = [int(p) for p in parts]
  except ValueError:
    numbers = None
  if not numbers or (len(numbers) == 1 and numbers[0] < 1) or len(set(numbers)) != len(numbers):
    raise ValueError(f'seeds must be a count (e.g. 3 for seeds 0, 1, 2) or a comma-separated list of distinct '
                     f'integers (e.g. 0,5,7), got {value!r}')
  return list(range(numbers[0])) if len(numbers) == 1 and ',' not in str(value) else numbers


def run_dir(workdir: str, condition: str, seed: int) -> str:
  return os.path.join(workdir, condition, f'seed_{seed}')


def read_result(workdir: str, condition: str, seed: int) -> dict | None:
  """A finished run's result (None if it has not finished)."""
  path = os.path.join(run_dir(workdir, condition, seed), RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


TrainFn = Callable[..., dict]


def run(study: Study, workdir: str, train_fn: TrainFn | None = None) -> dict[tuple[str, int], dict]:
  """Trains every condition × seed of `study` not finished before; returns {(condition, seed): result}.

  A result holds the run's final metrics, its `seed`, `condition` and `wall_s` (the seconds of the
  invocation that finished it: probe and evaluation included, and compilation for the first seed of a
  condition run in this process; the next seeds reuse its compiled steps). `train_fn(config, workdir,
  make_probe)` defaults to `train.train_and_evaluate`.
  """
  if train_fn is None:
    from inception_jax import train
    train_fn = train.train_and_evaluate
  results = {}
  todo = [(c, s) for c in study.conditions for s in study.seeds]
  for i, (condition, seed) in enumerate(todo, 1):
    label = f'{condition.name + " " if condition.name else ""}seed {seed} ({i}/{len(todo)})'
    result = read_result(workdir, condition.name, seed)
    if result is not None:
      print(f'--- {label}: finished before', flush=True)
      results[(condition.name, seed)] = result
      continue
    print(f'--- {label}', flush=True)
    directory = run_dir(workdir, condition.name, seed)
    config = copy.deepcopy(condition.config)
    with config.unlocked():
      config.seed = seed
    start = time.perf_counter()
    probe = _probe_maker(config, directory, study.probe_every) if study.probe_every else None
    metrics = train_fn(config, directory, probe) if probe else train_fn(config, directory)
    result = {**metrics, 'condition': condition.name, 'seed': seed, 'wall_s': time.perf_counter() - start}
    path = os.path.join(directory, RESULT_FILE)
    with open(path + '.tmp', 'w') as f:
      json.dump(result, f)
    os.replace(path + '.tmp', path)   # a run counts as finished only once this is whole
    results[(condition.name, seed)] = result
  return results


def _probe_maker(config: ml_collections.ConfigDict, directory: str, every: int):
  from inception_jax import gradient_flow

  def make_probe(model, spec):
    return gradient_flow.GradientFlow(model, spec, every, directory, smoothing=config.label_smoothing,
                                      aux_weight=config.aux_weight, seed=config.seed, time_overhead=False)

  return make_probe
