"""Xception with an ELU between the depthwise and the pointwise convolution of every separable convolution
(§4.7 of the Xception paper), otherwise the `xception` recipe.

ImageNet (paper, Figure 10: training curves only; between no activation (best) and ReLU (worst); no
final top-1 is reported (79.0% for `xception`)):
    python -m experiments.imagenet --config=xception_mid_elu --workdir=/tmp/xception_mid_elu
"""

from experiments.configs import base, xception


def get_config(arg: str | None = None):
  base.no_argument('xception_mid_elu', arg)
  c = xception.get_config()
  c.model_overrides.mid_activation = 'elu'
  return c
