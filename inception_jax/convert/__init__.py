"""Pretrained weights from other libraries' files: Keras applications, torchvision and timm.

    pretrained = convert.convert('timm:inception_v4', 'inception_v4.safetensors')
    convert.save(pretrained, 'weights/inception_v4')        # or: python -m experiments.convert
    model, variables = convert.load_pretrained('weights/inception_v4')
    logits = model.apply(variables, images, train=False).logits

Each source is one of our models built with the peer's conventions (padding, pooling, BatchNorm), so the
logits equal the peer's. The saved directory needs neither the peer library nor this package's converters,
and `--config.init_from=DIR` fine-tunes from it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from inception_jax.convert import keras, pytorch
from inception_jax.convert.core import ConversionError, Pretrained, load, save

SOURCES = {**keras.SOURCES, **pytorch.SOURCES}

__all__ = ['SOURCES', 'ConversionError', 'Pretrained', 'convert', 'load_pretrained', 'save']


def convert(source: str, path: str) -> Pretrained:
  """Reads the weights file at `path`, saved by the library and architecture `source` names.

  Args:
    source: one of `SOURCES`, e.g. 'keras:InceptionV3', 'torchvision:googlenet', 'timm:legacy_xception'.
    path: Keras `.keras` / `.weights.h5` / `.h5`; PyTorch `.pth` / `.pt` / `.bin` / `.safetensors`.

  Raises:
    ConversionError: unknown source, unreadable file, or a file for another architecture (the message
      names the first tensor that does not fit).
  """
  if source not in SOURCES:
    raise ConversionError(f'unknown source {source!r}; valid: {", ".join(sorted(SOURCES))}')
  return SOURCES[source].convert(path)


def load_pretrained(directory: str) -> tuple[nn.Module, dict[str, Any]]:
  """`(model, variables)` saved by `save` / `experiments.convert`, ready for
  `model.apply(variables, x, train=False)`."""
  pretrained = load(directory)
  return pretrained.create_model(), pretrained.variables
