"""The summary tool: GoogLeNet's seed arithmetic and the published multiply-add counts."""

import pytest

from inception_jax import models, summary
from inception_jax.models import layers
from inception_jax.models.layers import Conv


def test_a_5x5_conv_from_256_to_64_channels_has_409600_weights():
  conv = layers.ConvBN(64, 5, use_bn=False, use_bias=False, activation=None)
  assert summary.summarize(conv, (1, 28, 28, 256)).params == 5 * 5 * 256 * 64 == 409_600


def test_a_1x1_reduction_to_32_first_cuts_it_to_59392():
  reduced = layers.Mixed(((Conv('reduce', 32, 1), Conv('conv', 64, 5)),),
                         conv=lambda *a, **k: layers.ConvBN(*a, use_bn=False, use_bias=False, **k))
  assert summary.summarize(reduced, (1, 28, 28, 256)).params == 256 * 32 + 5 * 5 * 32 * 64 == 59_392


def test_macs_of_a_conv_are_output_cells_times_kernel_volume():
  conv = layers.ConvBN(64, 5, use_bn=False, use_bias=False)
  assert summary.summarize(conv, (1, 28, 28, 256)).macs == 28 * 28 * 409_600


# Published multiply-adds per image (torchvision / timm model cards, Xception paper).
@pytest.mark.parametrize('name,size,giga_macs', [
    ('inception_v3', 299, 5.71), ('inception_v4', 299, 12.28), ('inception_resnet_v2', 299, 13.18),
    ('xception', 299, 8.4), ('googlenet', 224, 1.50)])
def test_macs_within_3_percent_of_references(name, size, giga_macs):
  got = summary.summarize(models.create_model(name, aux_logits=False), (1, size, size, 3)).macs / 1e9
  assert got == pytest.approx(giga_macs, rel=0.03)


def test_cli_prints_the_table_and_totals(capsys):
  from experiments import cli
  from experiments import summary as summary_cli
  assert cli.run(summary_cli.main, ['summary', 'v3']) == 0
  out = capsys.readouterr().out
  assert 'Mixed_7c' in out and '23,834,568' in out and 'multiply-adds per image: 5.713 G' in out


def test_cli_unknown_model_is_one_line_and_exit_2(capsys):
  from experiments import cli
  from experiments import summary as summary_cli
  with pytest.raises(SystemExit) as e:
    cli.run(summary_cli.main, ['summary', 'inception_v9'])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'unknown model' in err[0]
