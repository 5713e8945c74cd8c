"""A claim of a paper, the number that tests it, and the rule that turns the seeds' numbers into a verdict.

A claim's quantity is an expression over the runs' measures, `M(condition, measure)`, evaluated once per
seed: seed s of every condition it names. Seed s of two conditions shares the data order and the
initialisation of the layers they have in common, so a difference taken seed by seed leaves out what the
seed does to both. Over the n seeds the quantity has a mean, a sample sd and a 95% confidence interval
(Student's t with n − 1 degrees of freedom: mean ± t·sd/√n; with 3 seeds, ± 2.48 sd).

A claim expects either an effect, quantity ≥ margin, or none, quantity < margin (e.g. "the side heads did
not speed up convergence": speed-up < 10%). The data establish an effect when the interval lies above zero
and the mean reaches the margin, and exclude it when the interval lies below the margin. Verdicts:
  * expects an effect: established → reproduced; excluded → refuted; otherwise not decidable;
  * expects none: excluded → reproduced; established → refuted; otherwise not decidable.
A seed whose quantity is undefined (a threshold its run never reached) makes the claim not decidable.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import statistics
from typing import Callable

REPRODUCED, REFUTED, UNDECIDED = 'reproduced', 'refuted', 'not decidable at this scale'
EFFECT, NO_EFFECT = 'effect', 'no_effect'


class Expr:
  """A number computed from one seed's measures; built with M(...), numbers and + - * /."""

  def evaluate(self, value: Callable[[str, str], float]) -> float:
    raise NotImplementedError

  def conditions(self) -> set[str]:
    raise NotImplementedError

  def __add__(self, other): return _Op('+', self, _lift(other))
  def __radd__(self, other): return _Op('+', _lift(other), self)
  def __sub__(self, other): return _Op('−', self, _lift(other))
  def __rsub__(self, other): return _Op('−', _lift(other), self)
  def __mul__(self, other): return _Op('×', self, _lift(other))
  def __rmul__(self, other): return _Op('×', _lift(other), self)
  def __truediv__(self, other): return _Op('/', self, _lift(other))
  def __rtruediv__(self, other): return _Op('/', _lift(other), self)
  def __neg__(self): return _Neg(self)


@dataclasses.dataclass(frozen=True, eq=False)
class M(Expr):
  """The measure `measure` of condition `condition`'s run (see `measures.run_measures`)."""
  condition: str
  measure: str

  def evaluate(self, value):
    return value(self.condition, self.measure)

  def conditions(self):
    return {self.condition}

  def __str__(self):
    return f'{self.measure}[{self.condition}]'


@dataclasses.dataclass(frozen=True, eq=False)
class _Const(Expr):
  value: float

  def evaluate(self, value):
    return float(self.value)

  def conditions(self):
    return set()

  def __str__(self):
    return f'{self.value:g}'


@dataclasses.dataclass(frozen=True, eq=False)
class _Neg(Expr):
  operand: Expr

  def evaluate(self, value):
    return -self.operand.evaluate(value)

  def conditions(self):
    return self.operand.conditions()

  def __str__(self):
    return f'−({self.operand})' if isinstance(self.operand, _Op) else f'−{self.operand}'


_OPS = {'+': operator.add, '−': operator.sub, '×': operator.mul, '/': operator.truediv}


@dataclasses.dataclass(frozen=True, eq=False)
class _Op(Expr):
  op: str
  left: Expr
  right: Expr

  def evaluate(self, value):
    a, b = self.left.evaluate(value), self.right.evaluate(value)
    if self.op == '/' and b == 0:
      return math.nan
    return _OPS[self.op](a, b)

  def conditions(self):
    return self.left.conditions() | self.right.conditions()

  def __str__(self):
    def side(e, right):
      text = str(e)
      # Parentheses where the operator would otherwise bind differently.
      if isinstance(e, _Op) and (self.op in '×/' and e.op in '+−' or right and self.op in '−/'):
        return f'({text})'
      return text
    return f'{side(self.left, False)} {self.op} {side(self.right, True)}'


def _lift(x) -> Expr:
  return x if isinstance(x, Expr) else _Const(float(x))


@dataclasses.dataclass(frozen=True)
class Claim:
  """Attributes:
    id: a short name (the report's tables).
    source: where the claim is made ('GoogLeNet §5').
    statement: the claim, in a sentence.
    quantity: the number that tests it, per seed.
    unit: the quantity's unit ('points', 'fraction of steps', ...).
    expects: EFFECT (quantity ≥ margin) or NO_EFFECT (quantity < margin).
    margin: the smallest effect that counts, in the quantity's unit.
  """
  id: str
  source: str
  statement: str
  quantity: Expr
  unit: str = ''
  expects: str = EFFECT
  margin: float = 0.0

  def __post_init__(self):
    if self.expects not in (EFFECT, NO_EFFECT):
      raise ValueError(f'claim {self.id}: expects must be {EFFECT!r} or {NO_EFFECT!r}, got {self.expects!r}')

  @property
  def criterion(self) -> str:
    """The test, in words, as the report states it."""
    above = f'lies above 0 and the mean is ≥ {self.margin:g}' if self.margin else 'lies above 0'
    below = f'lies below {self.margin:g}'
    if self.expects == EFFECT:
      return f'reproduced if the 95% interval over seeds {above}; refuted if it {below}'
    return f'reproduced if the 95% interval over seeds {below}; refuted if it {above}'


def t_quantile(df: int) -> float:
  """Student's t 0.975 quantile (the half-width of a two-sided 95% interval, in standard errors)."""
  from scipy import stats
  return float(stats.t.ppf(0.975, df))


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A claim tested: the quantity per seed, its statistics and the verdict."""
  claim: Claim
  values: dict[int, float]
  mean: float
  sd: float
  median: float
  low: float   # the 95% interval
  high: float
  verdict: str
  reason: str
  seeds_to_decide: int | None  # seeds that would decide it if the mean and sd held (None: decided)

  def to_json(self) -> dict:
    return {'id': self.claim.id, 'source': self.claim.source, 'statement': self.claim.statement,
            'quantity': str(self.claim.quantity), 'unit': self.claim.unit, 'expects': self.claim.expects,
            'margin': self.claim.margin, 'criterion': self.claim.criterion,
            'values': {str(k): v for k, v in self.values.items()}, 'n': len(self.values),
            'mean': self.mean, 'sd': self.sd, 'median': self.median, 'ci95': [self.low, self.high],
            'verdict': self.verdict, 'reason': self.reason, 'seeds_to_decide': self.seeds_to_decide}


def evaluate(claim: Claim, measures: dict[str, dict[int, dict[str, float]]]) -> Verdict:
  """Tests `claim` on `measures` ({condition: {seed: {measure: value}}}) over the seeds every condition
  it names has finished."""
  names = claim.quantity.conditions()
  seeds = sorted(set.intersection(*(set(measures.get(n, {})) for n in names))) if names else []
  values = {s: claim.quantity.evaluate(lambda c, m, s=s: float(measures[c][s].get(m, math.nan)))
            for s in seeds}
  nan = math.nan
  if len(values) < 2:
    return Verdict(claim, values, nan, nan, nan, nan, nan, UNDECIDED,
                   f'{len(values)} seed(s) finished in every condition it compares; it needs two or more', None)
  undefined = [s for s, v in values.items() if not math.isfinite(v)]
  if undefined:
    return Verdict(claim, values, nan, nan, nan, nan, nan, UNDECIDED,
                   f'undefined for seed(s) {", ".join(map(str, undefined))} (e.g. a threshold not reached)',
                   None)
  xs = list(values.values())
  n, mean, sd = len(xs), statistics.fmean(xs), statistics.stdev(xs)
  half = t_quantile(n - 1) * sd / math.sqrt(n)
  low, high = mean - half, mean + half
  established = low > 0 and mean >= claim.margin
  excluded = high < claim.margin
  if claim.expects == EFFECT:
    verdict = REPRODUCED if established else REFUTED if excluded else UNDECIDED
  else:
    verdict = REPRODUCED if excluded else REFUTED if established else UNDECIDED
  if established:
    reason = f'the interval [{low:.3g}, {high:.3g}] lies above 0 and the mean {mean:.3g} ≥ {claim.margin:g}'
  elif excluded:
    reason = f'the interval [{low:.3g}, {high:.3g}] lies below {claim.margin:g}'
  elif claim.margin > 0:
    reason = (f'the interval [{low:.3g}, {high:.3g}] neither lies above 0 with the mean ≥ {claim.margin:g} '
              f'nor below {claim.margin:g}')
  else:
    reason = f'the interval [{low:.3g}, {high:.3g}] holds 0'
  needed = None if verdict != UNDECIDED else seeds_to_decide(mean, sd, claim.margin)
  return Verdict(claim, values, mean, sd, statistics.median(xs), low, high, verdict, reason, needed)


def seeds_to_decide(mean: float, sd: float, margin: float, most: int = 10_000) -> int | None:
  """The fewest seeds whose 95% interval, at this mean and sd, would establish the effect (mean ≥ margin
  and above 0) or exclude it (mean below the margin); None when no number of seeds would (the mean sits
  on 0 exactly with a margin of 0) or more than `most` are needed."""
  if mean >= margin and mean > 0:
    gap = mean
  elif mean < margin:
    gap = margin - mean
  else:
    return None
  if sd == 0:
    return 2
  n = 2
  while n <= most:
    if t_quantile(n - 1) * sd / math.sqrt(n) < gap:
      return n
    n = n * 2 if n > 64 else n + 1
  return None
