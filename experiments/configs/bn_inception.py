"""BN-Inception, the "BN-x30" network of "Batch Normalization" (Ioffe & Szegedy 2015).

ImageNet (paper: 74.8% top-1 single crop for BN-x30; "Rethinking", Table 3: BN-Inception 25.2% top-1 /
7.8% top-5 error, i.e. 74.8 / 92.2):
    python -m experiments.imagenet --config=bn_inception --workdir=/tmp/bn_inception

From the paper (§4.2.1, "accelerating BN networks", applied to the GoogLeNet recipe of the `v1` preset):
SGD with momentum 0.9, learning rate 30× Inception's (0.045), decayed 6× faster (4% every 8/6 epochs),
no dropout, L2 weight decay 5× smaller (4e-5), fewer photometric distortions (none here), no auxiliary
classifiers. Not stated, and kept from the other presets: 100 epochs, Polyak averaging, batch 256.
"""

from experiments.configs import base, v1


def get_config(arg: str | None = None):
  base.no_argument('bn_inception', arg)
  c = v1.get_config()
  c.model = 'bn_inception'
  c.model_overrides.dropout_rate = 0.0
  c.aux_logits = False
  c.augment.color_distort = False
  c.learning_rate = 0.045
  c.decay_epochs = 8.0 / 6.0
  c.weight_decay = 4e-5
  c.total_epochs = 100.0
  return c
