"""A model's blocks in forward order and where its auxiliary heads branch off.

Every model in the zoo is a flat sequence of top-level submodules (stem convs, Inception modules, residual
blocks, heads), so the first key of a parameter path names its block. The order and the branch points are
read from the model itself by recording the top-level calls of one abstract forward pass; nothing is
allocated or computed.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from inception_jax.models.layers import AuxHead


@dataclasses.dataclass(frozen=True)
class BlockStructure:
  """Attributes:
    order: top-level block names in forward order, auxiliary heads included where they run.
    aux_branch: auxiliary head name -> the block whose output it reads.
  """
  order: tuple[str, ...]
  aux_branch: dict[str, str]

  @property
  def trunk(self) -> tuple[str, ...]:
    """The blocks on the main path (no auxiliary heads), input to output."""
    return tuple(b for b in self.order if b not in self.aux_branch)

  def upstream_of(self, head: str) -> tuple[str, ...]:
    """Trunk blocks whose parameters an auxiliary head's loss can reach."""
    branch = self.aux_branch[head]
    trunk = self.trunk
    return trunk[:trunk.index(branch) + 1]


def block_of(path: tuple) -> str:
  """Block name of a parameter path (tuple of keys or `jax.tree_util` key entries)."""
  first = path[0]
  return str(getattr(first, 'key', first))


def block_structure(model: nn.Module, input_size: int) -> BlockStructure:
  """Records the top-level calls of a training-mode forward pass at `input_size`×`input_size`."""
  calls: list[tuple[str, bool]] = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1:
      calls.append((module.path[0], isinstance(module, AuxHead)))
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(0)}
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(rngs, x, train=True), x)
  order, aux_branch, last = [], {}, None
  for name, is_aux in calls:
    if name in order:  # a block called twice (shared weights) keeps its first position
      continue
    order.append(name)
    if is_aux:
      aux_branch[name] = last
    else:
      last = name
  return BlockStructure(tuple(order), aux_branch)
