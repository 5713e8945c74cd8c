"""Rethinking Table 3, row "+ Factorized 7 × 7": the first 7×7 convolution becomes three 3×3 convolutions.

ImageNet (paper: 21.6% top-1 / 5.8% top-5 error, i.e. 78.4 / 94.2):
    python -m experiments.imagenet --config=v2_factorized_7x7 --workdir=/tmp/v2_factorized_7x7

The auxiliary head still has no BN; adding it is the last row, the `v3` preset.
"""

from experiments.configs import base, v2_label_smoothing


def get_config(arg: str | None = None):
  base.no_argument('v2_factorized_7x7', arg)
  c = v2_label_smoothing.get_config()
  c.model_overrides.stem = '3x3'
  return c
