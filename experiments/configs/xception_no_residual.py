"""Xception without residual connections (§4.6 of the Xception paper), otherwise the `xception` recipe.

ImageNet (paper, Figure 9: training curves only; the network without residuals converges more slowly and
to a clearly lower accuracy; no final top-1 is reported (79.0% for `xception`)):
    python -m experiments.imagenet --config=xception_no_residual --workdir=/tmp/xception_no_residual
"""

from experiments.configs import base, xception


def get_config(arg: str | None = None):
  base.no_argument('xception_no_residual', arg)
  c = xception.get_config()
  c.model_overrides.residual = False
  return c
