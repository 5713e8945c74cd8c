"""Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions").

ImageNet (paper, Table 1: 79.0% top-1 / 94.5% top-5, single crop):
    python -m experiments.imagenet --config=xception --workdir=/tmp/xception

From the paper (§4.3): SGD with momentum 0.9, lr 0.045 decayed ×0.94 every 2 epochs, weight decay 1e-5
(Inception-v3's 4e-5 was too strong), dropout 0.5 before the classifier, no auxiliary tower. Not stated and
chosen here: no label smoothing and no gradient clipping (the paper names neither), 100 epochs, Polyak
averaging evaluated next to the raw weights, batch 256, Keras' BN momentum 0.99.

The §4.6/§4.7 ablations are the presets `xception_no_residual`, `xception_mid_relu`, `xception_mid_elu`.
"""

from ml_collections.config_dict import placeholder

from experiments.configs import base


def get_config(arg: str | None = None):
  base.no_argument('xception', arg)
  c = base.get_config()
  c.model = 'xception'
  c.model_overrides.dropout_rate = 0.5
  c.model_overrides.bn_momentum = 0.99
  c.model_overrides.residual = True
  c.model_overrides.mid_activation = placeholder(str)  # None, 'relu' or 'elu'
  c.aux_logits = False
  c.optimizer = 'sgd'
  c.clip_norm = 0.0
  c.weight_decay = 1e-5
  c.label_smoothing = 0.0
  return c
