"""The same networks in other libraries, timed the way `experiments.benchmark` times ours: Keras 3
(on JAX) and torchvision (PyTorch: eager, or `torch.compile`d with `--peer=torchvision_compile`)."""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np

# The networks each peer library has of ours (our name -> theirs).
PEERS = {
    'keras': {'inception_v3': 'InceptionV3', 'inception_resnet_v2': 'InceptionResNetV2', 'xception': 'Xception'},
    'torchvision': {'inception_v3': 'inception_v3', 'googlenet': 'googlenet'},
}
PEERS['torchvision_compile'] = PEERS['torchvision']


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


def benchmark_torchvision(c, steps: int, warmup: int, num_classes: int = 1000, compiled: bool = False) -> dict:
  """torchvision's network of the same name in PyTorch, SGD with momentum, aux loss when aux is on, on
  the GPU when torch sees one. `c.dtype == 'bfloat16'` trains under autocast to bfloat16 (PyTorch's AMP)
  with the activations in channels-last memory order, as NVIDIA's recipes run convolutions on tensor cores;
  `compiled` wraps the network in `torch.compile`. Steps are timed back to back, as ours are
  (`step_timing.time_steps`), the device synchronised after the last."""
  # torch imports triton (GPU kernels) when installed; its compiled module crashes the process when
  # TensorFlow (our input pipeline) was loaded first. Eager CPU PyTorch does not need it; torch.compile on
  # a GPU does, and then nothing of ours has loaded TensorFlow.
  import torch
  if not (compiled and torch.cuda.is_available()):
    sys.modules.setdefault('triton', None)
  import torchvision

  from inception_jax.step_timing import time_steps
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  if device.type == 'cpu':
    torch.set_num_threads(os.cpu_count())
  amp = c.dtype == 'bfloat16'
  layout = torch.channels_last if amp and device.type == 'cuda' else torch.contiguous_format
  net = getattr(torchvision.models, PEERS['torchvision'][c.model])(
      weights=None, aux_logits=c.aux_logits, init_weights=False, num_classes=num_classes)
  net = net.to(device, memory_format=layout)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  x = (torch.rand(c.batch_size, 3, c.image_size, c.image_size, device=device) * 2 - 1).to(memory_format=layout)
  y = torch.randint(0, num_classes, (c.batch_size,), device=device)
  loss_fn = torch.nn.CrossEntropyLoss()
  model = torch.compile(net) if compiled else net

  def loss_of(out):
    if isinstance(out, tuple):   # (logits, aux logits...) with aux heads on
      return loss_fn(out[0], y) + sum(c.aux_weight * loss_fn(a, y) for a in out[1:] if a is not None)
    return loss_fn(out, y)

  def train_step():
    net.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
      loss = loss_of(model(x))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def infer():
    net.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
      model(x)

  def wait():
    if device.type == 'cuda':
      torch.cuda.synchronize()

  start = time.perf_counter()
  train_step()
  wait()
  compile_s = time.perf_counter() - start   # eager: the first step; with torch.compile, its compilation
  step_s = time_steps(train_step, wait, steps, warmup)
  infer()
  wait()
  infer_s = time_steps(infer, wait, steps, warmup)
  return {'compile_s': compile_s, 'step_s': step_s, 'infer_s': infer_s}


BENCHMARKS = {'keras': benchmark_keras, 'torchvision': benchmark_torchvision,
              'torchvision_compile': functools.partial(benchmark_torchvision, compiled=True)}
