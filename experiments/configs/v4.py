"""Inception-v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning").

ImageNet (paper, Table 2, single crop: 20.0% top-1 / 5.0% top-5 error, i.e. 80.0 / 95.0):
    python -m experiments.imagenet --config=v4 --workdir=/tmp/v4

From the paper: RMSProp (decay 0.9, ε 1.0), lr 0.045 decayed ×0.94 every 2 epochs, evaluation with a
running average of the parameters. Not stated there and kept from the `v3` recipe: label smoothing 0.1,
gradient clipping at 2.0, weight decay 4e-5, dropout 0.2, 100 epochs; the auxiliary head (TF-slim's,
after Inception-B) weighted 0.4; BN momentum 0.9997 as in TF-slim.
"""

from experiments.configs import base


def get_config(arg: str | None = None):
  base.no_argument('v4', arg)
  c = base.get_config()  # the defaults are the Rethinking recipe
  c.model = 'inception_v4'
  c.model_overrides.bn_momentum = 0.9997
  return c
