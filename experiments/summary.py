"""Per-block parameters, multiply-adds and output shapes of a model, and their totals.

    python -m experiments.summary v3 [--size=299] [--classes=1000] [--aux] [--xla]

The counting is `inception_jax.summary` (shapes only, nothing allocated).
"""

from __future__ import annotations

from absl import flags

from experiments import cli

_SIZE = flags.DEFINE_integer('size', None, "input size (default: the model's)")
_CLASSES = flags.DEFINE_integer('classes', 1000, 'output classes')
_AUX = flags.DEFINE_bool('aux', False, 'count the auxiliary heads too (training mode)')
_XLA = flags.DEFINE_bool('xla', False, "cross-check the multiply-adds with XLA's cost analysis")


def main(argv: list[str]) -> int:
  from inception_jax import models, summary  # after parsing: keeps --help fast
  if len(argv) != 2:
    cli.fail(f'give one model, e.g. `python -m experiments.summary v3`; the models: '
             f'{", ".join(models.list_models())}')
  try:
    info = models.model_info(argv[1])
    size = _SIZE.value or info.input_size
    model = models.create_model(info.name, num_classes=_CLASSES.value, aux_logits=_AUX.value)
    counts = summary.summarize(model, (1, size, size, 3), train=_AUX.value)
  except ValueError as e:
    cli.fail(e)
  print(summary.format_table(counts, f'{info.name} @ {size}×{size}, {_CLASSES.value} classes'
                                     f'{", with aux heads" if _AUX.value else ""}'))
  if _XLA.value:
    flops = summary.xla_flops(model, (1, size, size, 3))
    print(f'XLA cost analysis: {flops / 2e9:.3f} G multiply-add equivalents (FLOPs / 2, all ops)')
  return 0


if __name__ == '__main__':
  cli.run(main)
