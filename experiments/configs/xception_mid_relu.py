"""Xception with a ReLU between the depthwise and the pointwise convolution of every separable convolution
(§4.7 of the Xception paper), otherwise the `xception` recipe.

ImageNet (paper, Figure 10: training curves only; no intermediate activation is best, ELU next, ReLU
worst; no final top-1 is reported (79.0% for `xception`)):
    python -m experiments.imagenet --config=xception_mid_relu --workdir=/tmp/xception_mid_relu
"""

from experiments.configs import base, xception


def get_config(arg: str | None = None):
  base.no_argument('xception_mid_relu', arg)
  c = xception.get_config()
  c.model_overrides.mid_activation = 'relu'
  return c
