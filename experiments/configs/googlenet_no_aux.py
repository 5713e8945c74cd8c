"""GoogLeNet without its two auxiliary classifiers: the paper's control experiment (§5 of "Going Deeper
with Convolutions"), otherwise the `v1` recipe.

ImageNet (paper: the auxiliary networks' effect is "relatively minor (around 0.5%)" of top-1; no table):
    python -m experiments.imagenet --config=googlenet_no_aux --workdir=/tmp/googlenet_no_aux

This is the paper's GoogLeNet (`inception_v1`, no BN), where the heads are meant to help; for torchvision's
BN variant add `--config.model=googlenet`.
"""

from experiments.configs import base, v1


def get_config(arg: str | None = None):
  base.no_argument('googlenet_no_aux', arg)
  c = v1.get_config()
  c.aux_logits = False
  return c
