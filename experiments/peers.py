"""The same networks in other libraries, timed the way `experiments.benchmark` times ours: Keras 3
(on JAX) and torchvision (eager PyTorch)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

# The networks each peer library has of ours (our name -> theirs).
PEERS = {
    'keras': {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2', 'xception': 'Xception'},
    'torchvision': {'inception_v3': 'inception_v3', 'googlenet': 'googlenet'},
}


def benchmark_keras(c, steps: int, warmup: int, num_classes: int = 1000) -> dict:
  """keras.applications' network of the same name, trained with `train_on_batch` (JAX backend). Keras'
  networks have no auxiliary heads, so `--peer=keras` compares without them (`--aux=off` implied)."""
  import keras
  from inception_jax.step_timing import time_calls
  if keras.backend.backend() != 'jax':
    raise ValueError(f'--peer=keras needs KERAS_BACKEND=jax (it is {keras.backend.backend()!r})')
  net = getattr(keras.applications, PEERS['keras'][c.model])(
      weights=None, input_shape=(c.image_size, c.image_size, 3), classes=num_classes)
  net.compile(optimizer=keras.optimizers.RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0),
              loss=keras.losses.SparseCategoricalCrossentropy())
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (c.batch_size, c.image_size, c.image_size, 3)).astype(np.float32)
  y = rng.integers(0, num_classes, (c.batch_size,))
  start = time.perf_counter()
  net.train_on_batch(x, y)
  compile_s = time.perf_counter() - start
  step_s = time_calls(lambda: net.train_on_batch(x, y), steps, warmup)
  net.predict_on_batch(x)
  infer_s = time_calls(lambda: net.predict_on_batch(x), steps, warmup)
  return {'compile_s': compile_s, 'step_s': step_s, 'infer_s': infer_s}


def benchmark_torchvision(c, steps: int, warmup: int, num_classes: int = 1000) -> dict:
  """torchvision's network of the same name in eager PyTorch, SGD with momentum, aux loss when aux is on."""
  # torch imports triton (GPU kernels) when installed; its compiled module crashes the process when
  # TensorFlow (our input pipeline) was loaded first. Eager CPU PyTorch does not need it.
  sys.modules.setdefault('triton', None)
  import torch
  import torchvision

  from inception_jax.step_timing import time_calls
  torch.set_num_threads(os.cpu_count())
  net = getattr(torchvision.models, PEERS['torchvision'][c.model])(
      weights=None, aux_logits=c.aux_logits, init_weights=False, num_classes=num_classes)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  x = torch.rand(c.batch_size, 3, c.image_size, c.image_size) * 2 - 1
  y = torch.randint(0, num_classes, (c.batch_size,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_step():
    net.train()
    out = net(x)
    if isinstance(out, tuple):   # (logits, aux logits...) with aux heads on
      loss = loss_fn(out[0], y) + sum(c.aux_weight * loss_fn(a, y) for a in out[1:] if a is not None)
    else:
      loss = loss_fn(out, y)
    opt.zero_grad()
    loss.backward()
    opt.step()

  def infer():
    net.eval()
    with torch.no_grad():
      net(x)

  start = time.perf_counter()
  train_step()
  compile_s = time.perf_counter() - start   # eager: the first step, not a compilation
  step_s = time_calls(train_step, steps, warmup)
  infer_s = time_calls(infer, steps, warmup)
  return {'compile_s': compile_s, 'step_s': step_s, 'infer_s': infer_s}


BENCHMARKS = {'keras': benchmark_keras, 'torchvision': benchmark_torchvision}
