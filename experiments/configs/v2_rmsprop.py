"""Rethinking Table 3, row "Inception-v2 + RMSProp": the v2 baseline trained with RMSProp (decay 0.9, ε 1.0).

ImageNet (paper: 23.1% top-1 / 6.3% top-5 error, i.e. 76.9 / 93.7):
    python -m experiments.imagenet --config=v2_rmsprop --workdir=/tmp/v2_rmsprop
"""

from experiments.configs import base, v2


def get_config(arg: str | None = None):
  base.no_argument('v2_rmsprop', arg)
  c = v2.get_config()
  c.optimizer = 'rmsprop'
  return c
