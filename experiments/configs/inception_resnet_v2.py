"""Inception-ResNet-v2 (Szegedy et al. 2016), trained like Inception-v4 (the `v4` preset).

ImageNet (paper, Table 2, single crop: 19.9% top-1 / 4.9% top-5 error, i.e. 80.1 / 95.1):
    python -m experiments.imagenet --config=inception_resnet_v2 --workdir=/tmp/inception_resnet_v2

Same residual scales as `inception_resnet_v1` (0.17 / 0.10 / 0.20, those of the released model).
"""

from experiments.configs import base, inception_resnet_v1


def get_config(arg: str | None = None):
  base.no_argument('inception_resnet_v2', arg)
  c = inception_resnet_v1.get_config()
  c.model = 'inception_resnet_v2'
  return c
