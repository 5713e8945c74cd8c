"""GoogLeNet / Inception-v1 as in "Going Deeper with Convolutions" (Szegedy et al. 2014).

ImageNet (paper, Table 3: 10.07% top-5 error for one model and one crop; no top-1 given. "Rethinking",
Table 3, measures GoogLeNet at 29% top-1 / 9.2% top-5 error single crop):
    python -m experiments.imagenet --config=v1 --workdir=/tmp/v1

From the paper: SGD with momentum 0.9, the learning rate cut by 4% every 8 epochs, Polyak averaging for
the final model, auxiliary losses weighted 0.3, dropout 0.4 before the classifier (0.7 in the auxiliary
heads), crops of 8–100% of the image with aspect ratios in [3/4, 4/3], photometric distortions. The paper
gives neither the initial rate nor the length; the values here are those of the Caffe reference solver
(bvlc_googlenet): 0.01, weight decay 2e-4, 250 epochs. Batch 256 with the rate unscaled (the paper's
replicas were asynchronous; set `lr_reference_batch` to scale it linearly).
"""

from experiments.configs import base


def get_config(arg: str | None = None):
  base.no_argument('v1', arg)
  c = base.get_config()
  c.model = 'inception_v1'
  c.augment.color_distort = True
  c.optimizer = 'sgd'
  c.learning_rate = 0.01
  c.decay_rate = 0.96
  c.decay_epochs = 8.0
  c.total_epochs = 250.0
  c.clip_norm = 0.0
  c.weight_decay = 2e-4
  c.label_smoothing = 0.0
  c.aux_weight = 0.3
  return c
