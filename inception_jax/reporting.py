"""Where a run's metrics go: `metrics.jsonl`, TensorBoard events, and a console progress line.

Only process 0 writes files; every process may print. TensorBoard events are written through clu, whose
writer needs TensorFlow; on a host without it (an accelerator image with JAX alone, running synthetic data)
a run says so once and writes the rest.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax
import jax

class Reporter:
  def __init__(self, workdir: str, total_steps: int, global_batch: int):
    self.total_steps, self.global_batch = total_steps, global_batch
    self.writes = jax.process_index() == 0
    # Imported here, not with the module: it imports TensorFlow (~3 s), which a command that stops at bad
    # input before its run starts need not wait for.
    try:
      from clu import metric_writers
    except ImportError as e:  # clu or TensorFlow not installed
      self.writer = None
      if self.writes:
        print(f'warning: no TensorBoard events in {workdir} ({type(e).__name__}: {e}); metrics go to '
              f'metrics.jsonl', flush=True)
    else:
      self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.writes,
                                                         asynchronous=False)
    self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a') if self.writes else None
    self._t0, self._step0 = None, None

  def write_config(self, workdir: str, config: dict[str, Any]) -> None:
    if self.writes:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True, default=str)
      flat = flax.traverse_util.flatten_dict(config, sep='.')
      if self.writer:
        self.writer.write_hparams({k: v for k, v in flat.items() if isinstance(v, (int, float, str, bool))})

  def start(self, step: int) -> None:
    self._t0, self._step0 = time.perf_counter(), step

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` (keys like 'train/loss', 'eval/top1') for `step`."""
    scalars = {k: float(v) for k, v in scalars.items()}
    if self.writes:
      if self.writer:
        self.writer.write_scalars(step, scalars)
      self.jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
      self.jsonl.flush()

  def progress(self, step: int, loss: float, lr: float) -> None:
    """Prints one console line: step, loss, lr, images per second since the run (re)started, ETA."""
    elapsed = time.perf_counter() - self._t0
    done = step - self._step0
    rate = done * self.global_batch / max(elapsed, 1e-9)
    eta = (self.total_steps - step) * elapsed / max(done, 1)
    print(f'step {step:>7}/{self.total_steps}  loss {loss:.4f}  lr {lr:.3g}  {rate:,.1f} img/s  '
          f'ETA {_duration(eta)}', flush=True)

  def close(self) -> None:
    if self.writer:
      self.writer.flush()
      self.writer.close()
    if self.jsonl:
      self.jsonl.close()


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}'
