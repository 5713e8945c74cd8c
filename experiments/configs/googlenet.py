"""torchvision's BN-GoogLeNet (`googlenet`: BN after every convolution, 3×3 in the "5×5" branch), trained
with the GoogLeNet recipe of the `v1` preset.

ImageNet ("Rethinking", Table 3: BN-GoogLeNet 26.8% top-1 error, i.e. 73.2%; no top-5 given. torchvision's
weights for this exact network: 69.78% top-1 / 89.53% top-5):
    python -m experiments.imagenet --config=googlenet --workdir=/tmp/googlenet
"""

from experiments.configs import base, v1


def get_config(arg: str | None = None):
  base.no_argument('googlenet', arg)
  c = v1.get_config()
  c.model = 'googlenet'
  return c
