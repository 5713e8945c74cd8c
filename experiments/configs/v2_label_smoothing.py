"""Rethinking Table 3, row "+ Label Smoothing": v2 + RMSProp, with label smoothing ε = 0.1 (§7).

ImageNet (paper: 22.8% top-1 / 6.1% top-5 error, i.e. 77.2 / 93.9):
    python -m experiments.imagenet --config=v2_label_smoothing --workdir=/tmp/v2_label_smoothing
"""

from experiments.configs import base, v2_rmsprop


def get_config(arg: str | None = None):
  base.no_argument('v2_label_smoothing', arg)
  c = v2_rmsprop.get_config()
  c.label_smoothing = 0.1
  return c
