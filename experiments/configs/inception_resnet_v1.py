"""Inception-ResNet-v1 (Szegedy et al. 2016), trained like Inception-v4 (the `v4` preset).

ImageNet (paper, Table 2, single crop: 21.3% top-1 / 5.5% top-5 error, i.e. 78.7 / 94.5):
    python -m experiments.imagenet --config=inception_resnet_v1 --workdir=/tmp/inception_resnet_v1

Residuals are scaled by 0.17 / 0.10 / 0.20 in the A / B / C blocks (§3.3), overridable as
`--config.model_overrides.scale_a=...`.
"""

from experiments.configs import base, v4


def get_config(arg: str | None = None):
  base.no_argument('inception_resnet_v1', arg)
  c = v4.get_config()
  c.model = 'inception_resnet_v1'
  c.model_overrides.scale_a = 0.17
  c.model_overrides.scale_b = 0.10
  c.model_overrides.scale_c = 0.20
  return c
