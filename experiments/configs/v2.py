"""Inception-v2, the baseline row of "Rethinking the Inception Architecture", Table 3.

ImageNet (paper: 23.4% top-1 error single crop, i.e. 76.6% top-1; no top-5 given for this row):
    python -m experiments.imagenet --config=v2 --workdir=/tmp/v2

The Inception-v3 body with an unfactorized 7×7/2 stem convolution and an auxiliary head without BN
(`inception_v2`), trained as the paper's earlier experiments were: SGD with momentum 0.9, no label
smoothing. Everything else is the paper's training setup (lr 0.045 decayed ×0.94 every 2 epochs,
gradient clipping at 2.0, weight decay 4e-5, aux weight 0.4, Polyak averaging, 100 epochs).

Table 3 adds one change per row; each row is a preset that starts from the one above it:
    v2 → v2_rmsprop → v2_label_smoothing → v2_factorized_7x7 → v3 (+ BN-auxiliary)
"""

from experiments.configs import base


def get_config(arg: str | None = None):
  base.no_argument('v2', arg)
  c = base.get_config()
  c.model = 'inception_v2'
  c.model_overrides.bn_momentum = 0.9997
  c.optimizer = 'sgd'
  c.label_smoothing = 0.0
  return c
