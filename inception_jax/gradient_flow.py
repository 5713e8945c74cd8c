"""How much gradient the auxiliary classifiers deliver to each block, and in which direction.

GoogLeNet added its auxiliary heads to "increase the gradient signal that gets propagated back" to the lower
layers; Rethinking (§4) found they do little early in training and act as regularisers. This module
measures it during a training run: for each head (main, aux1, aux2, ...) and each block of the model, the
L2 norm of the gradient of that head's own loss with respect to the block's parameters, the same for the
total training loss, and the cosine between the main head's gradient and each other one, block by block.

One measurement is one forward pass (`jax.vjp`) and one backward pass per head plus one for the total loss,
on the training batch of that step, with the training-mode network (BN on batch statistics, dropout with a
key of its own), before the step updates the weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import kernels, losses
from inception_jax import step as step_lib
from inception_jax.models import blocks as blocks_lib

PyTree = Any


def head_names(num_aux: int) -> list[str]:
  return ['main'] + [f'aux{i}' for i in range(1, num_aux + 1)]


def head_gradients(model: nn.Module, params: PyTree, batch_stats: PyTree, images: jax.Array,
                   labels: jax.Array, rng: jax.Array, *, smoothing: float, aux_weight: float
                   ) -> tuple[jax.Array, list[PyTree], PyTree]:
  """Per-head losses, each head's loss gradient, and the total loss's gradient, from one forward pass.

  Returns:
    (losses, per_head, total): losses is (H,) for heads main, aux1, ...; per_head[h] the gradient of head
    h's unweighted loss; total the gradient of main + aux_weight · Σ aux (the training loss without weight
    decay), from its own backward pass.
  """

  def head_losses(params):
    out, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images, train=True,
                         rngs={'dropout': rng}, mutable=['batch_stats'])
    logits = (out.logits,) + tuple(out.aux_logits)
    return jnp.stack([losses.label_smoothed_cross_entropy(l, labels, smoothing) for l in logits])

  values, backward = jax.vjp(head_losses, params)
  count = values.shape[0]
  per_head = [backward(jnp.zeros(count).at[h].set(1.0))[0] for h in range(count)]
  weights = jnp.full((count,), aux_weight).at[0].set(1.0)
  total = backward(weights)[0]
  return values, per_head, total


def _block_reduce(tree: PyTree, block_names: list[str], leaf_fn: Callable) -> jax.Array:
  """(B,) sums of `leaf_fn(leaf...)` over each block's parameters (blocks by the first key of a path)."""
  sums = [jnp.zeros((), jnp.float32) for _ in block_names]
  index = {b: i for i, b in enumerate(block_names)}
  for path, leaves in tree:
    i = index.get(path[0])
    if i is not None:
      sums[i] = sums[i] + leaf_fn(*leaves)
  return jnp.stack(sums)


def _paired(*trees: PyTree) -> list[tuple[tuple, tuple]]:
  flats = [flax.traverse_util.flatten_dict(t) for t in trees]
  return [(path, tuple(f[path] for f in flats)) for path in flats[0]]


def make_probe(model: nn.Module, block_names: list[str], *, smoothing: float, aux_weight: float
               ) -> Callable:
  """`probe(params, batch_stats, batch, rng) -> {'loss': (H,), 'gram': (H+1, H+1, B), 'param_sq': (B,),
  'param_count': (B,)}`.

  Rows and columns of 'gram' are the heads then the total: per block, the dot product of every pair of
  gradients (the diagonal: squared norms), from which norms and cosines follow. 'param_sq' is each block's
  squared parameter norm, 'param_count' its number of parameters (to compare blocks by ‖g‖/‖w‖ and by
  the gradient's RMS per parameter). Everything reduces on the device.
  """

  def probe(params, batch_stats, batch, rng):
    values, per_head, total = head_gradients(model, params, batch_stats, batch['image'], batch['label'], rng,
                                             smoothing=smoothing, aux_weight=aux_weight)
    rows = per_head + [total]
    count = len(rows)
    dot = lambda a, b: jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32))  # noqa: E731
    gram = [[None] * count for _ in range(count)]
    for i in range(count):
      for j in range(i, count):
        gram[i][j] = gram[j][i] = _block_reduce(_paired(rows[i], rows[j]), block_names, dot)
    param_sq = _block_reduce(_paired(params), block_names, lambda a: dot(a, a))
    param_count = _block_reduce(_paired(params), block_names, lambda a: jnp.asarray(a.size, jnp.float32))
    return {'loss': values, 'gram': jnp.stack([jnp.stack(r) for r in gram]), 'param_sq': param_sq,
            'param_count': param_count}

  return probe


def records(step: int, measured: dict[str, np.ndarray], heads: list[str],
            block_names: list[str]) -> list[dict[str, Any]]:
  """One record per (head, block).

  Fields: step; head ('main', 'aux1', ..., 'total'); block; grad_norm; cos, the cosine of this head's
  gradient to every head's and the total's in the block ({head: value}, None where either gradient is
  zero); cos_to_main (cos['main']); loss (the head's own loss; None for 'total'); param_norm and
  param_count of the block.
  """
  gram = np.asarray(measured['gram'], np.float64)
  norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=0, axis2=1).T, 0.0))  # (rows, B)
  rows = heads + ['total']
  param_norm = np.sqrt(np.maximum(np.asarray(measured['param_sq'], np.float64), 0.0))
  out = []
  for h, head in enumerate(rows):
    for b, block in enumerate(block_names):
      cos = {}
      for o, other in enumerate(rows):
        denominator = norms[h, b] * norms[o, b]
        cos[other] = float(np.clip(gram[h, o, b] / denominator, -1.0, 1.0)) if denominator > 0 else None
      loss = float(measured['loss'][h]) if h < len(heads) else None
      out.append({'step': step, 'head': head, 'block': block, 'grad_norm': float(norms[h, b]), 'cos': cos,
                  'cos_to_main': cos['main'], 'loss': loss, 'param_norm': float(param_norm[b]),
                  'param_count': int(measured['param_count'][b])})
  return out


RECORDS_FILE, BLOCKS_FILE = 'gradient_flow.jsonl', 'blocks.json'


def describe_blocks(structure: blocks_lib.BlockStructure, recorded: list[str]) -> dict[str, Any]:
  """The recorded blocks, the trunk's among them (input to output; the classifier last), and per
  auxiliary head its module, the block it reads and the trunk blocks its loss reaches."""
  return {'blocks': list(recorded), 'trunk': [b for b in structure.trunk if b in recorded],
          'aux_heads': {head: {'module': module, 'branch': structure.aux_branch[module],
                               'upstream': [b for b in structure.upstream_of(module) if b in recorded]}
                        for head, module in aux_heads(structure).items()}}


def aux_heads(structure: blocks_lib.BlockStructure) -> dict[str, str]:
  """The recorded name of each auxiliary head ('aux1', 'aux2', ...: the order of the model's aux_logits,
  which is forward order) -> the module of the model that computes it (GoogLeNet's 'aux1', Inception-v3's
  'AuxLogits')."""
  return {head: module for head, module in zip(head_names(len(structure.aux_branch))[1:], structure.aux_branch)}


@functools.lru_cache(maxsize=1)
def _jitted_probe(model: nn.Module, blocks: tuple[str, ...], smoothing: float, aux_weight: float,
                  spec: Any) -> Callable:
  """`make_probe`'s probe, jitted, on the batch as the input pipeline gives it. The last one is kept: the
  next run of the same model (the next seed of a study's condition) skips tracing and compiling it."""
  measure = make_probe(model, list(blocks), smoothing=smoothing, aux_weight=aux_weight)
  return kernels.of(model).jit(lambda params, batch_stats, batch, rng: measure(
      params, batch_stats, step_lib.model_batch(batch, spec), rng))


@dataclasses.dataclass
class GradientFlow:
  """Measures every `every` steps of a training run and appends to `workdir/gradient_flow.jsonl`.

  `train.train_and_evaluate(config, workdir, make_probe=lambda model, spec: GradientFlow(model, spec, ...))`
  calls it with the state and the global batch before each training step (step = the number of updates
  done); uint8 batches are normalised by `spec` inside the measurement's program, as the train step does.
  With `time_overhead` the first measurement is timed against a plain gradient step (`overhead`).
  """
  model: nn.Module
  spec: Any   # data.ImageSpec: the input size and the normalisation
  every: int
  workdir: str
  smoothing: float
  aux_weight: float
  seed: int = 0
  time_overhead: bool = True

  def __post_init__(self):
    size = self.spec.size
    structure = blocks_lib.block_structure(self.model, size)
    self.structure = structure
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
    params = jax.eval_shape(lambda x: self.model.init(rngs, x, train=True), x)['params']
    self.blocks = [b for b in structure.order if b in params]  # e.g. not a top-level Dropout
    self.heads = head_names(len(structure.aux_branch))
    self.probe = _jitted_probe(self.model, tuple(self.blocks), self.smoothing, self.aux_weight, self.spec)
    self.path = os.path.join(self.workdir, RECORDS_FILE)
    self.overhead: dict[str, float] | None = None
    self._rng = jax.random.key(self.seed)
    if jax.process_index() == 0:  # what the records' block and head names are, for readers of the records
      os.makedirs(self.workdir, exist_ok=True)
      with open(os.path.join(self.workdir, BLOCKS_FILE), 'w') as f:
        json.dump(describe_blocks(structure, self.blocks), f, indent=1)

  def __call__(self, step: int, state: Any, batch: dict[str, jax.Array]) -> None:
    if step % self.every:
      return
    rng = jax.random.fold_in(self._rng, step)
    measured = jax.device_get(self.probe(state.params, state.batch_stats, batch, rng))
    if self.overhead is None and self.time_overhead:  # compiled now: time it once against a plain step
      self.overhead = self._time_against_plain_step(state, batch, rng)
    if jax.process_index() == 0:
      with open(self.path, 'a') as f:
        for r in records(step, measured, self.heads, self.blocks):
          f.write(json.dumps(r) + '\n')

  def _time_against_plain_step(self, state: Any, batch: dict[str, jax.Array], rng: jax.Array,
                               repeats: int = 3) -> dict[str, float]:
    """Median seconds of one measurement and of the training step's forward + backward pass."""

    images = step_lib.model_batch(batch, self.spec)['image']

    def total_loss(params):
      out, _ = self.model.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                                train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
      return losses.total_loss(out.logits, out.aux_logits, batch['label'], smoothing=self.smoothing,
                               aux_weight=self.aux_weight)[0]

    plain = kernels.of(self.model).jit(jax.value_and_grad(total_loss))

    def timed(fn):
      jax.block_until_ready(fn())
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
      return float(np.median(times))

    probe_s = timed(lambda: self.probe(state.params, state.batch_stats, batch, rng))
    plain_s = timed(lambda: plain(state.params))
    return {'probe_s': probe_s, 'train_step_s': plain_s, 'ratio': probe_s / plain_s}


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of `path`, the last of each (step, head, block): a resumed run measures again the steps
  after its last checkpoint."""
  latest = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        latest[(r['step'], r['head'], r['block'])] = r
  return sorted(latest.values(), key=lambda r: r['step'])


# --- the records as arrays ----------------------------------------------------------------------------------


class Gradients:
  """A run's records as arrays: rows are the heads then 'total', blocks the recorded blocks.

  Blocks differ in size, and BatchNorm makes a layer's output indifferent to its weights' scale, so blocks
  are compared by the relative gradient ‖g‖/‖w‖ beside the raw norm. The side heads' share of a block's
  gradient is ‖w·Σ g_aux‖ / (‖g_main‖ + ‖w·Σ g_aux‖), with w·Σ g_aux = g_total − g_main (its norm follows
  from the recorded norms and the total's cosine to the main head).

  Attributes:
    steps: (S,) measured steps; rows; blocks; trunk; aux_heads (as `describe_blocks`).
    norm: (R, B, S) ‖g‖ per row, block and step; cos: (R, R, B, S) cosines (NaN where a gradient is 0).
    param_norm: (B, S); param_count: (B,).
  """

  def __init__(self, steps, rows, blocks, trunk, aux_heads, norm, cos, param_norm, param_count):
    self.steps, self.rows, self.blocks, self.trunk, self.aux_heads = steps, rows, blocks, trunk, aux_heads
    self.norm, self.cos, self.param_norm = (np.asarray(a, float) for a in (norm, cos, param_norm))
    self.param_count = np.asarray(param_count, np.int64)

  @classmethod
  def from_records(cls, records_: list[dict], blocks: dict[str, Any]) -> 'Gradients':
    """From `records` and `describe_blocks`'s description."""
    steps = sorted({r['step'] for r in records_})
    rows = list(dict.fromkeys(r['head'] for r in records_))
    names = blocks['blocks']
    R, B, S = len(rows), len(names), len(steps)
    row, block, step = ({n: i for i, n in enumerate(x)} for x in (rows, names, steps))
    norm, cos = np.full((R, B, S), np.nan), np.full((R, R, B, S), np.nan)
    param_norm, param_count = np.full((B, S), np.nan), np.zeros(B, np.int64)
    for r in records_:
      h, b, s = row[r['head']], block[r['block']], step[r['step']]
      norm[h, b, s] = r['grad_norm']
      for other, value in r['cos'].items():
        cos[h, row[other], b, s] = np.nan if value is None else value
      param_norm[b, s] = r['param_norm']
      param_count[b] = r['param_count']
    return cls(steps, rows, names, blocks['trunk'], blocks['aux_heads'], norm, cos, param_norm, param_count)

  @classmethod
  def read(cls, directory: str) -> 'Gradients | None':
    """The records a run wrote in `directory` (None when the probe did not run there)."""
    path = os.path.join(directory, RECORDS_FILE)
    if not os.path.exists(path):
      return None
    with open(os.path.join(directory, BLOCKS_FILE)) as f:
      blocks = json.load(f)
    return cls.from_records(read_records(path), blocks)

  def to_json(self) -> dict:
    """Compact arrays (NaN as null); `from_json` reads them back."""
    return {'steps': self.steps, 'rows': self.rows, 'blocks': self.blocks, 'trunk': self.trunk,
            'aux_heads': self.aux_heads, 'grad_norm': _rounded(self.norm), 'cos': _rounded(self.cos),
            'param_norm': _rounded(self.param_norm), 'param_count': self.param_count.tolist()}

  @classmethod
  def from_json(cls, d: dict) -> 'Gradients':
    floats = lambda x: np.array(x, dtype=float)  # noqa: E731  (null -> NaN)
    return cls(d['steps'], d['rows'], d['blocks'], d['trunk'], d['aux_heads'], floats(d['grad_norm']),
               floats(d['cos']), floats(d['param_norm']), d['param_count'])

  def index(self, names) -> list[int]:
    return [self.blocks.index(n) for n in names]

  def relative(self, row: str) -> np.ndarray:
    """(B, S) ‖g‖/‖w‖ of `row`'s gradient."""
    with np.errstate(divide='ignore', invalid='ignore'):
      return self.norm[self.rows.index(row)] / self.param_norm

  def aux_share(self) -> np.ndarray:
    """(B, S) the side heads' share of each block's gradient (NaN where no gradient reaches it)."""
    main, total = self.rows.index('main'), self.rows.index('total')
    m, t = self.norm[main], self.norm[total]
    cos = np.nan_to_num(self.cos[total, main], nan=0.0)
    aux = np.sqrt(np.maximum(t ** 2 + m ** 2 - 2 * t * m * cos, 0.0))
    with np.errstate(divide='ignore', invalid='ignore'):
      return np.where(m + aux > 0, aux / (m + aux), np.nan)

  def cos_to_main(self, head: str) -> np.ndarray:
    """(B, S) the cosine of `head`'s gradient to the main head's."""
    return self.cos[self.rows.index(head), self.rows.index('main')]

  @property
  def lower(self) -> list[str]:
    """The trunk blocks below the first side head's branch point (its input included): where GoogLeNet
    expected the side heads' gradient to matter."""
    first = next(iter(self.aux_heads.values()), None)
    return first['upstream'] if first else []

  @property
  def stem_and_top(self) -> tuple[str, str]:
    """The first trunk block and the last one below the classifier."""
    return self.trunk[0], self.trunk[-2] if len(self.trunk) > 1 else self.trunk[-1]

  def window(self, start: float, stop: float) -> np.ndarray:
    """Boolean (S,): the measured steps in [start, stop)."""
    steps = np.asarray(self.steps, float)
    return (steps >= start) & (steps < stop)


def _rounded(a: np.ndarray):
  return [_rounded(x) for x in a] if a.ndim else (None if not np.isfinite(a) else float(f'{a:.6g}'))


# --- summaries ----------------------------------------------------------------------------------------------


def summary(g: Gradients, aux_weight: float, overhead: dict[str, float] | None = None, label: str = '') -> str:
  """One paragraph: the side heads' share of the stem's gradient at the first and last measurement, their
  direction relative to the main head's, and how the main head's gradient changes with depth."""
  first, last = g.steps[0], g.steps[-1]
  ends = [0, len(g.steps) - 1]
  stem, top = g.stem_and_top
  s, t = g.index((stem, top))
  text = [f'{label}measured at {len(g.steps)} steps ({first} to {last}).']
  if g.aux_heads:
    shares = g.aux_share()[s, ends]
    text.append(f'In the stem ({stem}) the auxiliary heads carry {shares[0]:.1%} of the gradient norm at step '
                f'{first} and {shares[1]:.1%} at step {last} (share = ‖w·Σ g_aux‖ / (‖g_main‖ + ‖w·Σ g_aux‖), '
                f'w = {aux_weight}).')
    for head, info in g.aux_heads.items():
      cos = np.nanmean(g.cos_to_main(head)[g.index(info['upstream'])][:, ends], axis=0)
      name = head if head == info['module'] else f'{head} ({info["module"]})'
      text.append(f'{name}, after {info["branch"]}, points at cosine {cos[0]:.2f} to the main head\'s '
                  f'gradient at step {first} and {cos[1]:.2f} at step {last}, averaged over the '
                  f'{len(info["upstream"])} blocks below it.')
  else:
    text.append('The model has no auxiliary head; main-head gradients only.')
  relative, raw = g.relative('main'), g.norm[g.rows.index('main')]
  with np.errstate(divide='ignore', invalid='ignore'):
    ratios, raw_ratios = relative[s, ends] / relative[t, ends], raw[s, ends] / raw[t, ends]
  text.append(f'The main head\'s relative gradient ‖g‖/‖w‖ in the stem is {ratios[0]:.3g}× that of the last '
              f'block below the classifier ({top}) at step {first} and {ratios[1]:.3g}× at step {last} '
              f'(raw norms: {raw_ratios[0]:.3g}× and {raw_ratios[1]:.3g}×).')
  if overhead:
    text.append(f'One measurement takes {overhead["probe_s"]:.3g} s, {overhead["ratio"]:.2f}× a plain '
                f'training step ({overhead["train_step_s"]:.3g} s).')
  return ' '.join(text)


# --- plots --------------------------------------------------------------------------------------------------


def plot(g: Gradients, workdir: str) -> list[str]:
  """A heat map (block × step) per head and a depth profile of the first and last measurement."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  written = []
  for h, head in enumerate(g.rows):
    with np.errstate(divide='ignore', invalid='ignore'):
      grid = np.where(g.norm[h] > 0, np.log10(g.norm[h]), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(g.steps) + 3), max(4, 0.18 * len(g.blocks) + 1)))
    image = ax.imshow(grid, aspect='auto', interpolation='nearest', cmap='viridis')
    ax.set_yticks(range(len(g.blocks)), g.blocks, fontsize=6)
    ticks = np.linspace(0, len(g.steps) - 1, min(len(g.steps), 8)).round().astype(int)
    ax.set_xticks(ticks, [g.steps[i] for i in ticks])
    ax.set_xlabel('step')
    ax.set_title(f'log10 ‖∂L_{head}/∂θ_block‖ (blank: zero)')
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    written.append(os.path.join(workdir, f'heatmap_{head}.png'))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

  trunk = g.index(g.trunk)
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.3 * len(trunk) + 4), 4.5), sharey=True)
  for ax, s in zip(axes, (0, len(g.steps) - 1)):
    for h, head in enumerate(g.rows):
      values = g.norm[h][trunk, s]
      ax.plot(range(len(trunk)), np.where(values > 0, values, np.nan), marker='.', label=head,
              linestyle='--' if head == 'total' else '-')
    ax.set_yscale('log')
    ax.set_xticks(range(len(trunk)), g.trunk, rotation=90, fontsize=6)
    ax.set_title(f'step {g.steps[s]}')
    ax.set_xlabel('block (input → output)')
  axes[0].set_ylabel('gradient norm')
  axes[-1].legend()
  fig.tight_layout()
  written.append(os.path.join(workdir, 'depth_profile.png'))
  fig.savefig(written[-1], dpi=110)
  plt.close(fig)
  return written


def plot_comparison(runs: dict[str, Gradients], path: str, head: str = 'total') -> str:
  """Depth profiles of `head` at the last measurement, one line per run (aux off / on / BN-auxiliary)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  trunk = next(iter(runs.values())).trunk
  fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(trunk) + 4), 4.5))
  for name, g in runs.items():
    values = g.norm[g.rows.index(head)][g.index(trunk), -1]
    ax.plot(range(len(trunk)), np.where(values > 0, values, np.nan), marker='.',
            label=f'{name} (step {g.steps[-1]})')
  ax.set_yscale('log')
  ax.set_xticks(range(len(trunk)), trunk, rotation=90, fontsize=6)
  ax.set_ylabel(f'‖∂L_{head}/∂θ_block‖')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
