"""Orbax checkpoints of a training run: periodic async saves, keep-N, resume from the newest; and the
weights of a finished run, for fine-tuning (`init_from`)."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose arrays do not fit the state it should be restored into."""


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` saving the whole `TrainState` under `workdir/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, force: bool = False) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores `step` (default: newest) into the shapes and shardings of `abstract_state`."""
    step = self.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_newest(self, state: Any) -> tuple[Any, int | None]:
    """(`state` restored from the newest readable checkpoint, its step), or (`state`, None) when there is
    none. A checkpoint that cannot be read (truncated or corrupted files, e.g. a copy cut short) is
    reported in one line and moved aside to `workdir/corrupt_checkpoints/` — kept for inspection, and out
    of the manager's way so that the step can be saved again — and the one before it is tried. A readable
    checkpoint of another model is an error (a new workdir, or `init_from`, is what was meant)."""
    self.manager.reload()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        self._check_shapes(step, state)
        return self.restore(state, step), step
      except CheckpointMismatch:
        raise
      except Exception as e:  # orbax, tensorstore and the file system each raise their own kinds
        reason = (str(e).strip().splitlines() or [''])[0][:200]
        moved = self._move_aside(step)
        print(f'checkpoint step {step} is unreadable ({type(e).__name__}: {reason}); moved to {moved}; '
              'trying the one before it', flush=True)
    return state, None

  def _check_shapes(self, step: int, state: Any) -> None:
    """Raises `CheckpointMismatch` when the checkpoint's arrays differ in shape from `state`'s."""
    saved = self.manager.item_metadata(step)
    saved = {'/'.join(str(getattr(k, 'key', k)) for k in path): m
             for path, m in jax.tree_util.tree_flatten_with_path(dict(saved))[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      name = '/'.join(str(getattr(k, 'name', getattr(k, 'key', k))) for k in path)
      meta = saved.get(name)
      shape = tuple(getattr(meta, 'shape', ()) or ())
      if meta is None or shape != tuple(leaf.shape):
        found = 'missing' if meta is None else f'of shape {shape}'
        raise CheckpointMismatch(
            f'checkpoint step {step} in {self.directory} does not belong to this run: its {name} is {found}, '
            f'this model\'s is of shape {tuple(leaf.shape)} (another model or num_classes?); resume it '
            'with its own config, or give a new workdir (with init_from to start from its weights)')

  def _move_aside(self, step: int) -> str:
    source = os.path.join(self.directory, str(step))
    target = os.path.join(os.path.dirname(self.directory), 'corrupt_checkpoints', str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      suffix = 0
      while os.path.exists(target + (f'.{suffix}' if suffix else '')):
        suffix += 1
      target += f'.{suffix}' if suffix else ''
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
    self.manager.reload()
    return target

  def close(self) -> None:
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None


def read_weights(path: str) -> dict[str, Any]:
  """`params` and `batch_stats` (as numpy arrays) saved under `path`: a training run's workdir, its
  `checkpoints/` directory (the newest step is read) or one step directory in it; a directory of converted
  pretrained weights (`python -m experiments.convert`); or a directory that `ocp.StandardCheckpointer`
  wrote a `{'params': ..., 'batch_stats': ...}` tree to (exported weights)."""
  directory = os.path.abspath(path)
  for inner in ('checkpoints', 'variables'):  # a run's workdir; converted weights (model.json + variables)
    if os.path.isdir(os.path.join(directory, inner)):
      directory = os.path.join(directory, inner)
      break
  metadata, restore = _weights_reader(directory) if os.path.isdir(directory) else (None, None)
  if metadata is None:
    raise ValueError(f'init_from {path!r}: no checkpoint there (give a workdir, its checkpoints/ '
                     'directory, one step directory in it, a directory of converted weights, or a '
                     'directory of weights saved with orbax)')
  if 'params' not in metadata:
    raise ValueError(f'init_from {path!r}: the checkpoint has no params (top-level keys: '
                     f'{", ".join(sorted(metadata))})')
  # Orbax restores whole trees only; numpy targets keep it off the devices.
  restored = restore(jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata))
  return {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}


def _weights_reader(directory: str) -> tuple[dict | None, Any]:
  """(the tree's metadata, a function restoring it into a target) for the checkpoint in `directory`: the
  newest step of a CheckpointManager's directory, one step of one (its parent is the manager's), or a
  StandardCheckpointer's item; (None, None) when there is none."""
  name = os.path.basename(directory)
  for root, step in ((directory, None), (os.path.dirname(directory), int(name) if name.isdigit() else -1)):
    if step == -1:
      continue
    manager = ocp.CheckpointManager(root, item_handlers=ocp.StandardCheckpointHandler(),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    steps = manager.all_steps()
    if steps and (step is None or step in steps):
      step = max(steps) if step is None else step
      return (dict(manager.item_metadata(step)),
              lambda target: manager.restore(step, args=ocp.args.StandardRestore(target)))
  checkpointer = ocp.StandardCheckpointer()
  try:
    metadata = checkpointer.metadata(directory).item_metadata
  except Exception:  # noqa: BLE001 — orbax raises several kinds for "not a checkpoint"
    return None, None
  if metadata is None:
    return None, None
  return dict(metadata), lambda target: checkpointer.restore(directory, target)
