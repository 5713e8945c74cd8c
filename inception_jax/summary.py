"""Per-block parameter and multiply-add counts of a model, from shapes alone.

    python -m experiments.summary v3 [--size=299] [--classes=1000] [--aux] [--xla]

MACs count the multiply-adds of convolutions and dense layers (what torchvision, timm and the papers call
"FLOPs" or "ops"), for one image in eval mode. Shapes come from `jax.eval_shape`, so even VGG-16 is summarised
without allocating its weights. `--xla` cross-checks the total against XLA's cost analysis of the compiled
forward pass; XLA skips the products with the zeros of 'SAME' padding, so it reads a few percent lower.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.blocks import block_of


@dataclasses.dataclass
class Row:
  """One top-level block: its parameter count, multiply-adds per image and output shape."""
  name: str
  params: int = 0
  macs: int = 0
  output_shape: tuple = ()


@dataclasses.dataclass
class Summary:
  rows: list[Row]
  batch_stats: int  # BN running statistics: not trainable, but Keras counts them as parameters

  @property
  def params(self) -> int:
    return sum(r.params for r in self.rows)

  @property
  def macs(self) -> int:
    return sum(r.macs for r in self.rows)


def _layer_macs(module: nn.Module, x, y) -> int:
  """Multiply-adds of one Conv/Dense call for a single example."""
  if isinstance(module, nn.Conv):
    kh, kw = module.kernel_size
    in_per_group = x.shape[-1] // module.feature_group_count
    return math.prod(y.shape[1:-1]) * kh * kw * in_per_group * y.shape[-1]
  if isinstance(module, nn.Dense):
    return math.prod(x.shape[1:]) * y.shape[-1]
  return 0


def summarize(model: nn.Module, input_shape: tuple[int, ...], train: bool = False) -> Summary:
  """Counts parameters and MACs per top-level submodule of `model` for input `input_shape` (NHWC).

  Works for any module called as `module(x, train=...)`; MACs are per example.
  """
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=train), x)
  rows: dict[str, Row] = {}

  def row(name):
    return rows.setdefault(name, Row(name))

  def record(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and module.path:
      if len(module.path) == 1 and hasattr(y, 'shape'):
        row(module.path[0]).output_shape = tuple(y.shape[1:])
      row(module.path[0]).macs += _layer_macs(module, args[0], y)
    return y

  def forward(variables, x):
    out = model.apply(variables, x, train=train, rngs={'dropout': rngs['dropout']},
                      mutable=['batch_stats'] if train else False)
    return out[0] if train else out

  with nn.intercept_methods(record):
    jax.eval_shape(forward, variables, x)
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables.get('params', {}))[0]:
    row(block_of(path)).params += leaf.size
  batch_stats = sum(leaf.size for leaf in jax.tree.leaves(variables.get('batch_stats', {})))
  # Blocks with neither parameters nor MACs (pools, dropout) carry no information in a table.
  return Summary([r for r in rows.values() if r.params or r.macs], batch_stats)


def xla_flops(model: nn.Module, input_shape: tuple[int, ...]) -> float:
  """FLOPs XLA's cost analysis reports for the compiled eval forward pass, per example."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  compiled = jax.jit(lambda v, x: model.apply(v, x).logits).lower(variables, x).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX returns one dict per computation
    analysis = analysis[0]
  return float(analysis['flops']) / input_shape[0]


def format_table(summary: Summary, title: str = '') -> str:
  lines = [title] if title else []
  lines.append(f'{"block":<24} {"output":>18} {"params":>14} {"MMACs":>10}')
  lines.append('-' * 69)
  for r in summary.rows:
    shape = '×'.join(str(d) for d in r.output_shape)
    lines.append(f'{r.name:<24} {shape:>18} {r.params:>14,} {r.macs / 1e6:>10.1f}')
  lines.append('-' * 69)
  lines.append(f'{"total":<24} {"":>18} {summary.params:>14,} {summary.macs / 1e6:>10.1f}')
  lines.append(f'with BN running statistics (as Keras counts): {summary.params + summary.batch_stats:,}')
  lines.append(f'multiply-adds per image: {summary.macs / 1e9:.3f} G')
  return '\n'.join(lines)
