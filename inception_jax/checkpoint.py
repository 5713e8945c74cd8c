"""Orbax checkpoints of a training run: periodic async saves, keep-N, resume from the newest; and the
weights of a finished run, for fine-tuning (`init_from`)."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` saving the whole `TrainState` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, force: bool = False) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores `step` (default: newest) into the shapes and shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def read_weights(path: str) -> dict[str, Any]:
  """`params` and `batch_stats` (as numpy arrays) saved under `path`: a training run's workdir, its
  `checkpoints/` directory (the newest step is read) or one step directory in it; a directory of converted
  pretrained weights (`python -m experiments.convert`); or a directory that `ocp.StandardCheckpointer`
  wrote a `{'params': ..., 'batch_stats': ...}` tree to (exported weights)."""
  item = _weights_item(os.path.abspath(path))
  if item is None:
    raise ValueError(f'init_from {path!r}: no checkpoint there (give a workdir, its checkpoints/ '
                     'directory, one step directory in it, a directory of converted weights, or a '
                     'directory of weights saved with orbax)')
  checkpointer = ocp.StandardCheckpointer()
  metadata = dict(checkpointer.metadata(item).item_metadata)
  if 'params' not in metadata:
    raise ValueError(f'init_from {path!r}: the checkpoint has no params (top-level keys: '
                     f'{", ".join(sorted(metadata))})')
  # Orbax restores whole trees only; numpy targets keep it off the devices.
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)
  restored = checkpointer.restore(item, target)
  return {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}


def _weights_item(directory: str) -> str | None:
  """The orbax item directory under `directory`, or None."""
  for inner in ('checkpoints', 'variables'):  # a run's workdir; converted weights (model.json + variables)
    if os.path.isdir(os.path.join(directory, inner)):
      directory = os.path.join(directory, inner)
      break
  if not os.path.isdir(directory):
    return None
  steps = [int(d) for d in os.listdir(directory)
           if d.isdigit() and os.path.isdir(os.path.join(directory, d, 'default'))]
  if steps:  # a CheckpointManager's directory: its newest step
    directory = os.path.join(directory, str(max(steps)))
  if os.path.isdir(os.path.join(directory, 'default')):  # one step of it
    return os.path.join(directory, 'default')
  if os.path.exists(os.path.join(directory, '_CHECKPOINT_METADATA')):  # a StandardCheckpointer item
    return directory
  return None
