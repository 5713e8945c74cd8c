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
import json
import math
import os
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inception_jax import losses, train
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


BLOCKS_FILE = 'blocks.json'


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
    measure = make_probe(self.model, self.blocks, smoothing=self.smoothing, aux_weight=self.aux_weight)
    self.probe = jax.jit(lambda params, batch_stats, batch, rng: measure(
        params, batch_stats, train.model_batch(batch, self.spec), rng))
    self.path = os.path.join(self.workdir, 'gradient_flow.jsonl')
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

    images = train.model_batch(batch, self.spec)['image']

    def total_loss(params):
      out, _ = self.model.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                                train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
      return losses.total_loss(out.logits, out.aux_logits, batch['label'], smoothing=self.smoothing,
                               aux_weight=self.aux_weight)[0]

    plain = jax.jit(jax.value_and_grad(total_loss))

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


# --- summaries ----------------------------------------------------------------------------------------------


def aux_share(records_: list[dict], step: int, block: str, aux_weight: float) -> float | None:
  """Share of the auxiliary heads in the gradient of `block` at `step`: ‖w·Σ g_aux‖ / (‖g_main‖ + ‖w·Σ g_aux‖).

  w·Σ g_aux = g_total − g_main, whose norm follows from the recorded norms and the total's cosine to the
  main head. None when the model has no auxiliary head.
  """
  at = {r['head']: r for r in records_ if r['step'] == step and r['block'] == block}
  if len(at) <= 2:  # main and total only
    return None
  main, total = at['main']['grad_norm'], at['total']['grad_norm']
  cos = at['total']['cos_to_main'] or 0.0
  aux = math.sqrt(max(total ** 2 + main ** 2 - 2 * total * main * cos, 0.0))
  return aux / (main + aux) if main + aux > 0 else None


def summary(records_: list[dict], structure: blocks_lib.BlockStructure, aux_weight: float,
            overhead: dict[str, float] | None = None, label: str = '') -> str:
  """One paragraph: the aux heads' share of the stem's gradient at the first and last measurement, their
  direction relative to the main head's, and how the main head's gradient changes with depth."""
  steps = sorted({r['step'] for r in records_})
  first, last = steps[0], steps[-1]
  recorded = {r['block'] for r in records_}
  trunk = [b for b in structure.trunk if b in recorded]
  stem, top = trunk[0], trunk[-1]
  norm = {(r['step'], r['head'], r['block']): r['grad_norm'] for r in records_}
  text = [f'{label}measured at {len(steps)} steps ({first} to {last}).']
  if structure.aux_branch:
    shares = [aux_share(records_, s, stem, aux_weight) for s in (first, last)]
    text.append(f'In the stem ({stem}) the auxiliary heads carry {shares[0]:.1%} of the gradient norm at step '
                f'{first} and {shares[1]:.1%} at step {last} (share = ‖w·Σ g_aux‖ / (‖g_main‖ + ‖w·Σ g_aux‖), '
                f'w = {aux_weight}).')
    for head, module in aux_heads(structure).items():
      below = [b for b in structure.upstream_of(module) if b in recorded]
      cos = [np.mean([r['cos_to_main'] for r in records_ if r['step'] == s and r['head'] == head
                      and r['block'] in below and r['cos_to_main'] is not None] or [np.nan])
             for s in (first, last)]
      name = head if head == module else f'{head} ({module})'
      text.append(f'{name}, after {structure.aux_branch[module]}, points at cosine {cos[0]:.2f} to the main '
                  f'head\'s gradient at step {first} and {cos[1]:.2f} at step {last}, averaged over the '
                  f'{len(below)} blocks below it.')
  else:
    text.append('The model has no auxiliary head; main-head gradients only.')
  ratios = [norm[(s, 'main', stem)] / norm[(s, 'main', top)] if norm[(s, 'main', top)] else np.nan
            for s in (first, last)]
  text.append(f'The main head\'s gradient norm in the stem is {ratios[0]:.3g}× that of the last block '
              f'({top}) at step {first} and {ratios[1]:.3g}× at step {last}.')
  if overhead:
    text.append(f'One measurement takes {overhead["probe_s"]:.3g} s, {overhead["ratio"]:.2f}× a plain '
                f'training step ({overhead["train_step_s"]:.3g} s).')
  return ' '.join(text)


# --- plots --------------------------------------------------------------------------------------------------


def plot(records_: list[dict], structure: blocks_lib.BlockStructure, workdir: str) -> list[str]:
  """A heat map (block × step) per head and a depth profile of the first and last measurement."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  steps = sorted({r['step'] for r in records_})
  heads = list(dict.fromkeys(r['head'] for r in records_))
  recorded = {r['block'] for r in records_}
  order = [b for b in structure.order if b in recorded]
  trunk = [b for b in structure.trunk if b in recorded]
  norm = {(r['step'], r['head'], r['block']): r['grad_norm'] for r in records_}
  written = []
  for head in heads:
    grid = np.array([[norm.get((s, head, b), np.nan) for s in steps] for b in order])
    with np.errstate(divide='ignore'):
      grid = np.where(grid > 0, np.log10(grid), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(steps) + 3), max(4, 0.18 * len(order) + 1)))
    image = ax.imshow(grid, aspect='auto', interpolation='nearest', cmap='viridis')
    ax.set_yticks(range(len(order)), order, fontsize=6)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int)
    ax.set_xticks(ticks, [steps[i] for i in ticks])
    ax.set_xlabel('step')
    ax.set_title(f'log10 ‖∂L_{head}/∂θ_block‖ (blank: zero)')
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    written.append(os.path.join(workdir, f'heatmap_{head}.png'))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

  fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.3 * len(trunk) + 4), 4.5), sharey=True)
  for ax, step in zip(axes, (steps[0], steps[-1])):
    for head in heads:
      values = [norm.get((step, head, b), np.nan) for b in trunk]
      values = [v if v and v > 0 else np.nan for v in values]
      ax.plot(range(len(trunk)), values, marker='.', label=head, linestyle='--' if head == 'total' else '-')
    ax.set_yscale('log')
    ax.set_xticks(range(len(trunk)), trunk, rotation=90, fontsize=6)
    ax.set_title(f'step {step}')
    ax.set_xlabel('block (input → output)')
  axes[0].set_ylabel('gradient norm')
  axes[-1].legend()
  fig.tight_layout()
  written.append(os.path.join(workdir, 'depth_profile.png'))
  fig.savefig(written[-1], dpi=110)
  plt.close(fig)
  return written


def plot_comparison(runs: dict[str, list[dict]], structure: blocks_lib.BlockStructure, path: str,
                    head: str = 'total') -> str:
  """Depth profiles of `head` at the last measurement, one line per run (aux off / on / BN-auxiliary)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  recorded = {r['block'] for records_ in runs.values() for r in records_}
  trunk = [b for b in structure.trunk if b in recorded]
  fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(trunk) + 4), 4.5))
  for name, records_ in runs.items():
    last = max(r['step'] for r in records_)
    norm = {r['block']: r['grad_norm'] for r in records_ if r['step'] == last and r['head'] == head}
    ax.plot(range(len(trunk)), [norm.get(b) or np.nan for b in trunk], marker='.', label=f'{name} (step {last})')
  ax.set_yscale('log')
  ax.set_xticks(range(len(trunk)), trunk, rotation=90, fontsize=6)
  ax.set_ylabel(f'‖∂L_{head}/∂θ_block‖')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
