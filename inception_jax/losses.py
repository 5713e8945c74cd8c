"""Training losses and eval counts of the Inception papers.

* Label-smoothed cross-entropy ("Rethinking the Inception Architecture", §7): the target is
  (1 - ε)·onehot + ε/K over K classes; ε = 0.1 in the paper.
* The auxiliary-weighted total loss: GoogLeNet adds its two auxiliary heads with weight 0.3, Inception-v3
  its one head with weight 0.4 (TF-slim's recipe); each head sees the same smoothed targets.
* L2 weight decay on conv and dense kernels, in TF-slim's convention (see `l2_weight_decay`), and the kernel
  mask that decoupled weight decay in `optim.py` reuses.
* Top-k correct counts for exact, masked evaluation (padded eval batches carry a mask).

Losses and counts are computed in float32 whatever the logits' dtype, so bfloat16 compute does not
round the loss.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

PyTree = Any


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean of per-example `values` over masked-in examples; 0 when none is."""
  if mask is None:
    return jnp.mean(values)
  weights = jnp.asarray(mask).astype(jnp.float32).reshape(values.shape)
  total = jnp.sum(values * weights)
  count = jnp.sum(weights)
  # Dividing by a safe denominator instead of selecting after the division keeps gradients finite for an
  # all-padding batch (where's unused branch would still produce 0/0 in the backward pass).
  return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def label_smoothed_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Mean cross-entropy against label-smoothed targets (Rethinking §7).

  Args:
    logits: (N, K) unnormalized scores, any float dtype.
    labels: (N,) integer class indices.
    smoothing: ε in [0, 1]; the target is (1 - ε)·onehot(label) + ε/K. 0 is plain cross-entropy.
    mask: optional (N,) bool or float weights; the mean is over masked-in examples only (0 if none),
      so padded examples of a last, partial batch do not count.

  Returns:
    A float32 scalar.
  """
  if isinstance(smoothing, (int, float)) and not 0.0 <= smoothing <= 1.0:
    raise ValueError(f'label smoothing must be in [0, 1], got {smoothing}')
  logits = jnp.asarray(logits).astype(jnp.float32)
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  targets = (1.0 - smoothing) * targets + smoothing / num_classes
  per_example = -jnp.sum(targets * log_probs, axis=-1)
  return _masked_mean(per_example, mask)


def total_loss(
    logits: jax.Array,
    aux_logits: Sequence[jax.Array],
    labels: jax.Array,
    *,
    smoothing: float,
    aux_weight: float,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Main loss plus `aux_weight` times the sum of the auxiliary heads' losses.

  Args:
    logits: (N, K) main-head logits.
    aux_logits: the auxiliary heads' (N, K) logits in model order; () when the model has none (or at eval).
    labels: (N,) integer class indices.
    smoothing: label smoothing ε, applied to every head alike.
    aux_weight: weight of each auxiliary loss (GoogLeNet 0.3, Inception-v3 0.4).
    mask: optional (N,) per-example mask, as in `label_smoothed_cross_entropy`.

  Returns:
    (total, parts): the float32 scalar to minimize, and {'main': ..., 'aux1': ..., 'aux2': ...} with each
    head's unweighted loss, for logging.
  """
  parts = {'main': label_smoothed_cross_entropy(logits, labels, smoothing, mask)}
  for i, aux in enumerate(aux_logits, start=1):
    parts[f'aux{i}'] = label_smoothed_cross_entropy(aux, labels, smoothing, mask)
  aux_sum = sum((v for k, v in parts.items() if k != 'main'), jnp.zeros((), jnp.float32))
  return parts['main'] + aux_weight * aux_sum, parts


def _leaf_name(path: tuple) -> str | None:
  """The last key of a pytree path: a dict key or attribute name."""
  if not path:
    return None
  last = path[-1]
  return getattr(last, 'key', getattr(last, 'name', None))


def decay_mask(params: PyTree) -> PyTree:
  """A pytree like `params` with True for the leaves weight decay applies to: conv and dense kernels.

  Flax names every Conv and Dense weight (depthwise and pointwise ones included) 'kernel'; biases and
  BatchNorm scale/offset are left alone, as in TF-slim, where only `weights_regularizer` is set.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) == 'kernel', params)


def l2_weight_decay(params: PyTree, weight: float) -> jax.Array:
  """L2 penalty on the kernels, to be added to the loss: weight · ½ · Σ kernel².

  This is TF-slim's convention: `slim.l2_regularizer(weight)` adds weight · tf.nn.l2_loss(w), and
  tf.nn.l2_loss is ½Σw². The papers' 4e-5 (Rethinking, Inception-v4, Inception-ResNet) is a TF-slim weight.
  Keras' `regularizers.l2(weight)` adds weight · Σw² (no ½), so TF-slim's 4e-5 is Keras' 2e-5.
  The gradient of this term is weight · w, the same as SGD's usual coupled weight decay.

  Args:
    params: the model's params tree.
    weight: the regularization weight (0 gives 0).

  Returns:
    A float32 scalar.
  """
  mask = decay_mask(params)
  sq = [jnp.sum(jnp.square(jnp.asarray(p, jnp.float32)))
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
  return weight * 0.5 * sum(sq, jnp.zeros((), jnp.float32))


def topk_correct(
    logits: jax.Array,
    labels: jax.Array,
    k: int,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Number of (masked-in) examples whose label is among the k highest logits.

  Ties are broken by class index, as `lax.top_k`, `argmax` and `torch.topk` do. TF's `in_top_k` instead
  counts every class tied at the boundary as in the top k, which would score constant logits (a
  zero-initialized classifier) as 100% correct.

  Args:
    logits: (N, K) scores.
    labels: (N,) integer class indices.
    k: how many top classes count as a hit (1 for top-1 accuracy, 5 for top-5).
    mask: optional (N,) bool/float mask; padded examples count 0.

  Returns:
    A float32 scalar count; divide the sum over batches by the number of real examples for accuracy.
  """
  _, top = jax.lax.top_k(jnp.asarray(logits).astype(jnp.float32), k)
  hit = jnp.any(top == jnp.asarray(labels)[:, None], axis=-1).astype(jnp.float32)
  if mask is not None:
    hit = hit * jnp.asarray(mask).astype(jnp.float32).reshape(hit.shape)
  return jnp.sum(hit)
