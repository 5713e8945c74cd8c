"""How far a float32 training gradient is from its float64 value, under each `kernels` setting.

    python -m experiments.grad_precision --size=75 --batch=16 --aux=False    # the embedded default's shape
    python -m experiments.grad_precision --size=299 --batch=4 --aux=True

The same float32 initial weights and batch (uniform in [-1, 1]), the training loss (label smoothing 0.1,
aux weight 0.4), its gradient computed in float32 and in float64; prints, per setting, the relative error
of the whole gradient and the median and largest relative error of a parameter array. Results in
docs/performance.md ("The kernels switch and float32").
"""

import json

from absl import flags

from experiments import cli

_MODEL = flags.DEFINE_string('model', 'inception_v3', 'a model name or alias')
_SIZE = flags.DEFINE_integer('size', 75, 'input size', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch', 16, 'images in the batch', lower_bound=1)
_AUX = flags.DEFINE_bool('aux', False, 'with the auxiliary heads (their loss weighted 0.4)')


def relative_errors(model_name: str, size: int, batch: int, aux: bool, kernels: str) -> dict[str, float]:
  """The float32 gradient's relative error against float64: whole, and the median and max per array."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from inception_jax import losses, models

  x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3), jnp.float64, -1, 1)
  labels = jnp.arange(batch) % 10

  def gradient(dtype):
    model = models.create_model(model_name, num_classes=10, aux_logits=aux, kernels=kernels, dtype=dtype,
                                param_dtype=dtype)
    variables = model.clone(dtype=jnp.float32, param_dtype=jnp.float32).init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, x[:1].astype(jnp.float32), train=True)
    variables = jax.tree.map(lambda a: a.astype(dtype), variables)

    def loss(params):
      out, _ = model.apply({**variables, 'params': params}, x.astype(dtype), train=True,
                           rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
      return losses.total_loss(out.logits, out.aux_logits, labels, smoothing=0.1, aux_weight=0.4)[0]

    grads = model.kernels.jit(jax.grad(loss))(variables['params'])
    return [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]

  with jax.enable_x64(True):
    exact, rounded = gradient(jnp.float64), gradient(jnp.float32)
  per_array = [np.linalg.norm(r - e) / np.linalg.norm(e) for r, e in zip(rounded, exact) if np.any(e)]
  whole = np.linalg.norm(np.concatenate([(r - e).ravel() for r, e in zip(rounded, exact)])) / np.linalg.norm(
      np.concatenate([e.ravel() for e in exact]))
  return {'whole': float(whole), 'median_array': float(np.median(per_array)), 'max_array': float(max(per_array))}


def main(argv):
  del argv
  record = {'model': _MODEL.value, 'size': _SIZE.value, 'batch': _BATCH.value, 'aux': _AUX.value}
  try:
    for kernels in ('lax', 'cpu'):
      record[kernels] = relative_errors(_MODEL.value, _SIZE.value, _BATCH.value, _AUX.value, kernels)
  except ValueError as e:
    cli.fail(e)
  for kernels in ('lax', 'cpu'):
    e = record[kernels]
    print(f'kernels={kernels}: {e["whole"]:.2%} of the gradient (per array: median {e["median_array"]:.2%}, '
          f'max {e["max_array"]:.2%})', flush=True)
  print(json.dumps(record), flush=True)


if __name__ == '__main__':
  cli.run(main)
