"""Converts a pretrained weights file of Keras, torchvision or timm into this project's format.

    python -m experiments.convert --from=timm:inception_v4 --src=model.safetensors --out=weights/v4
    python -m experiments.convert --from=keras:InceptionV3 --src=inception_v3_weights_tf_dim_ordering_tf_kernels.h5 --out=weights/v3
    python -m experiments.convert --list

The output directory holds `model.json` (the model and the options that reproduce the peer) and the
variables (orbax). Use it with `inception_jax.convert.load_pretrained(DIR)`, `experiments.classify
--weights=DIR`, or `experiments.imagenet --config.init_from=DIR` to fine-tune.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--from', dest='source', help='library:architecture, e.g. timm:inception_v4')
  parser.add_argument('--src', help='the weights file (.keras/.h5, .pth/.pt/.bin/.safetensors)')
  parser.add_argument('--out', help='new directory to write')
  parser.add_argument('--list', action='store_true', help='list the sources and exit')
  args = parser.parse_args(argv)
  from inception_jax import convert  # after parsing: keeps --help fast
  if args.list:
    for name, source in sorted(convert.SOURCES.items()):
      print(f'{name:28s} -> {source.model} {source.overrides or ""}')
    return
  missing = [f'--{n}' for n, v in (('from', args.source), ('src', args.src), ('out', args.out)) if not v]
  if missing:
    parser.error(f'{", ".join(missing)} required (or --list)')
  try:
    pretrained = convert.convert(args.source, args.src)
    directory = convert.save(pretrained, args.out)
  except (convert.ConversionError, OSError) as e:  # OSError: an --out the system refuses
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  count = sum(np.size(a) for part in ('params',) for a in _leaves(pretrained.variables[part]))
  print(f'{args.source} -> {pretrained.model} ({pretrained.num_classes} classes'
        f'{", auxiliary heads" if pretrained.aux_logits else ""}, {count:,} parameters): {directory}')


def _leaves(tree):
  for value in tree.values():
    yield from _leaves(value) if isinstance(value, dict) else (value,)


if __name__ == '__main__':
  main()
