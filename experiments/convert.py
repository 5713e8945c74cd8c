"""Converts a pretrained weights file of Keras, torchvision or timm into this project's format.

    python -m experiments.convert --from=timm:inception_v4 --src=model.safetensors --out=weights/v4
    python -m experiments.convert --from=keras:InceptionV3 --src=inception_v3_weights_tf_dim_ordering_tf_kernels.h5 --out=weights/v3
    python -m experiments.convert --list

The output directory holds `model.json` (the model and the options that reproduce the peer) and the
variables (orbax). Use it with `inception_jax.convert.load_pretrained(DIR)`, `experiments.classify
--weights=DIR`, or `experiments.imagenet --config.init_from=DIR` to fine-tune.
"""

from __future__ import annotations

from absl import flags
import numpy as np

from experiments import cli

_FROM = flags.DEFINE_string('from', None, 'library:architecture, e.g. timm:inception_v4 (see --list)')
_SRC = flags.DEFINE_string('src', None, 'the weights file (.keras/.h5, .pth/.pt/.bin/.safetensors)')
_OUT = flags.DEFINE_string('out', None, 'new directory to write')
_LIST = flags.DEFINE_bool('list', False, 'list the sources and exit')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected argument {argv[1]!r}; convert takes only --from, --src, --out or --list')
  from inception_jax import convert  # after parsing: keeps --help fast
  if _LIST.value:
    for name, source in sorted(convert.SOURCES.items()):
      print(f'{name:28s} -> {source.model} {source.overrides or ""}')
    return
  missing = [f'--{n}' for n, v in (('from', _FROM.value), ('src', _SRC.value), ('out', _OUT.value)) if not v]
  if missing:
    cli.fail(f'{", ".join(missing)} required (or --list to see the sources)')
  try:
    pretrained = convert.convert(_FROM.value, _SRC.value)
    directory = convert.save(pretrained, _OUT.value)
  except (convert.ConversionError, OSError) as e:  # OSError: an --out the system refuses
    cli.fail(e)
  count = sum(np.size(a) for a in _leaves(pretrained.variables['params']))
  print(f'{_FROM.value} -> {pretrained.model} ({pretrained.num_classes} classes'
        f'{", auxiliary heads" if pretrained.aux_logits else ""}, {count:,} parameters): {directory}')


def _leaves(tree):
  for value in tree.values():
    yield from _leaves(value) if isinstance(value, dict) else (value,)


if __name__ == '__main__':
  cli.run(main)
