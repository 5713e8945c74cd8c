"""GoogLeNet: the paper's Table 1 (inception_v1) and torchvision's BN port (googlenet), from shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.models import googlenet  # noqa: F401  (registers inception_v1 and googlenet)
from inception_jax.models import layers
from inception_jax.models.blocks import block_structure
from inception_jax.models.registry import create_model, model_info
from inception_jax.summary import summarize

# Table 1 of the paper, typed in again here so the model's own table is checked against it:
# (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj); None marks a stride-2 max pool.
TABLE_1 = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), None,
           (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
           (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), None,
           (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]
MODULE_NAMES = ['inception3a', 'inception3b', 'inception4a', 'inception4b', 'inception4c', 'inception4d',
                'inception4e', 'inception5a', 'inception5b']
MODULE_WIDTHS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]
MODULE_GRIDS = [28, 28, 14, 14, 14, 14, 14, 7, 7]


def paper_layers(k5=5):
  """(kernel, cin, cout, grid) of every convolution and the classifier of Table 1 at 224×224."""
  convs = [(7, 3, 64, 112), (1, 64, 64, 56), (3, 64, 192, 56)]
  cin, grid = 192, 28
  for row in TABLE_1:
    if row is None:
      grid //= 2
      continue
    c1, r3, c3, r5, c5, proj = row
    convs += [(1, cin, c1, grid), (1, cin, r3, grid), (3, r3, c3, grid), (1, cin, r5, grid),
              (k5, r5, c5, grid), (1, cin, proj, grid)]
    cin = c1 + c3 + c5 + proj
  return convs, cin


def aux_head_params(cin, bn):
  proj = cin * 128 + (2 * 128 if bn else 128)
  return proj + (4 * 4 * 128 * 1024 + 1024) + (1024 * 1000 + 1000)


def count(model, size=224, train=False):
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=train))
  return sum(x.size for x in jax.tree.leaves(v['params']))


@pytest.mark.parametrize('aux,expected', [(False, 6_624_904), (True, 13_004_888)])
def test_googlenet_parameter_count_equals_torchvision(aux, expected):
  assert count(create_model('googlenet', aux_logits=aux)) == expected


def test_inception_v1_parameter_count_is_table_1_with_biases():
  convs, width = paper_layers()
  main = sum(k * k * cin * cout + cout for k, cin, cout, _ in convs) + width * 1000 + 1000
  assert count(create_model('inception_v1', aux_logits=False)) == main
  with_aux = main + aux_head_params(512, bn=False) + aux_head_params(528, bn=False)
  assert count(create_model('inception_v1')) == with_aux
  # Table 1's params column sums to ≈6.8M, but its module entries are ~3% below what its own filter
  # numbers give (3a: 159K printed, 163K by the filters, whose 128M ops the ops column does match). The
  # Caffe model has these 6,998,552 parameters.
  assert main == 6_998_552


def test_googlenet_differs_from_table_1_by_bn_and_its_3x3_branch():
  convs, width = paper_layers(k5=3)
  bn_params = sum(k * k * cin * cout + 2 * cout for k, cin, cout, _ in convs) + width * 1000 + 1000
  assert count(create_model('googlenet', aux_logits=False)) == bn_params


def test_multiply_adds_at_224_are_table_1s_1_5_g():
  convs, width = paper_layers()
  macs = sum(g * g * k * k * cin * cout for k, cin, cout, g in convs) + width * 1000
  summary = summarize(create_model('inception_v1', aux_logits=False), (1, 224, 224, 3))
  assert summary.macs == macs
  # Table 1's ops column sums to 1.50G with its 34M separable first layer; the dense 7×7 costs 118M.
  assert macs - 112 * 112 * 7 * 7 * 3 * 64 + 34e6 == pytest.approx(1.5e9, rel=0.01)


def test_seed_arithmetic_of_the_1x1_reduction():
  """§4: a 5×5 conv from 256 to 64 channels vs the same after a 1×1 reduction to 32 (weights only)."""
  conv = functools.partial(layers.ConvBN, use_bn=False)

  def weights(branch):
    mixed = layers.Mixed((branch,), conv)
    v = jax.eval_shape(lambda: mixed.init(jax.random.key(0), jnp.zeros((1, 8, 8, 256))))
    kernels = jax.tree_util.tree_leaves_with_path(v['params'])
    return sum(x.size for path, x in kernels if path[-1].key == 'kernel')

  assert weights((layers.Conv('b5x5', 64, 5),)) == 409_600
  assert weights((layers.Conv('reduce', 32, 1), layers.Conv('b5x5', 64, 5))) == 59_392


@pytest.mark.parametrize('name', ['inception_v1', 'googlenet'])
def test_grids_and_module_widths_at_224(name):
  rows = {r.name: r.output_shape for r in summarize(create_model(name), (1, 224, 224, 3)).rows}
  assert rows['conv1'] == (112, 112, 64)
  assert rows['conv3'] == (56, 56, 192)
  assert [rows[m] for m in MODULE_NAMES] == [(g, g, c) for g, c in zip(MODULE_GRIDS, MODULE_WIDTHS)]


@pytest.mark.parametrize('name,kernel', [('inception_v1', 5), ('googlenet', 3)])
def test_5x5_branch_is_true_5x5_in_the_paper_and_3x3_in_torchvision(name, kernel):
  v = jax.eval_shape(lambda: create_model(name).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert v['params']['inception3a']['branch3_1']['conv']['kernel'].shape == (kernel, kernel, 16, 32)


@pytest.mark.parametrize('name,bn', [('inception_v1', False), ('googlenet', True)])
def test_aux_heads_branch_after_4a_and_4d(name, bn):
  structure = block_structure(create_model(name), 224)
  assert structure.aux_branch == {'aux1': 'inception4a', 'aux2': 'inception4d'}
  v = jax.eval_shape(lambda: create_model(name).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  for head, cin in (('aux1', 512), ('aux2', 528)):
    params = v['params'][head]
    assert set(params['proj']) == ({'conv', 'bn'} if bn else {'conv'})
    assert params['proj']['conv']['kernel'].shape == (1, 1, cin, 128)
    assert params['fc1']['kernel'].shape == (2048, 1024)  # 128 × 4 × 4 at 224
    assert params['fc']['kernel'].shape == (1024, 1000)
  # Convolutions carry a bias exactly when there is no BN.
  assert ('bias' in v['params']['conv1']['conv']) == (not bn)


def torch_pool_out(n, window, stride, pad=0):
  """PyTorch's ceil-mode pooling output size (0 where PyTorch raises)."""
  out = -(-(n + 2 * pad - window) // stride) + 1
  if (out - 1) * stride >= n + pad:
    out -= 1
  return max(out, 0)


def torchvision_last_grid(n):
  n = (n + 2 * 3 - 7) // 2 + 1  # conv1 7×7/2 pad 3
  for window in (3, 3, 3, 2):   # maxpool1..4, ceil mode, between size-preserving convs and modules
    n = torch_pool_out(n, window, 2) if n > 0 else 0
  return n


def test_minimum_input_sizes_match_torchvision_arithmetic():
  assert torchvision_last_grid(14) == 0 and torchvision_last_grid(15) == 1
  assert model_info('googlenet').min_input_size == 15
  assert model_info('googlenet').min_aux_input_size == 15  # its aux heads pool any grid to 4×4
  # 'SAME' padding accepts any grid; the paper's aux head needs a 5×5 grid after 4a: ceil(n / 16) >= 5.
  assert model_info('inception_v1').min_input_size == 1
  assert model_info('inception_v1').min_aux_input_size == 65
  model = create_model('inception_v1')
  with pytest.raises(ValueError, match='at least 5×5'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=True))


def test_unknown_padding_style_is_rejected():
  model = create_model('googlenet', padding_style='valid')
  with pytest.raises(ValueError, match='padding_style'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))


def caffe_lrn(x, size, alpha, beta, k):
  """Caffe's LRN ACROSS_CHANNELS on NHWC, written out: zero-padded window of `size` channels."""
  c = x.shape[-1]
  out = np.empty_like(x)
  for i in range(c):
    lo, hi = max(0, i - size // 2), min(c, i + size // 2 + 1)
    scale = k + alpha / size * np.sum(x[..., lo:hi] ** 2, axis=-1)
    out[..., i] = x[..., i] / scale ** beta
  return out


@pytest.mark.parametrize('size,alpha,beta,k', [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.6, 2.0)])
def test_local_response_norm_is_caffes_formula(size, alpha, beta, k):
  x = 10 * np.random.default_rng(0).standard_normal((2, 3, 4, 9)).astype(np.float32)
  got = layers.local_response_norm(jnp.asarray(x), size, alpha, beta, k)
  np.testing.assert_allclose(got, caffe_lrn(x, size, alpha, beta, k), rtol=1e-5, atol=1e-6)
