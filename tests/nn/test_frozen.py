"""FrozenBatchNorm: torch's BatchNorm in eval (and torchvision's FrozenBatchNorm2d formula) in
both modes; buffers only; state_dicts moving between it and batch norms; the reference."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import normlab
from normlab import reference as R
from conftest import assert_rel


def trained_bn(cls=torch.nn.BatchNorm2d, shape=(8, 4, 3, 3)):
    bn = cls(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
    for _ in range(3):
        bn(3 * torch.randn(shape) + 2)
    return bn.eval()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_is_torch_batch_norm_in_eval_and_torchvisions_formula(backend, mode):
    bn = trained_bn()
    frozen = normlab.FrozenBatchNorm(4)
    frozen.load_state_dict(bn.state_dict())
    frozen.train(mode == "train")
    x = torch.randn(5, 4, 3, 3)
    xf, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = frozen(xf)
    assert_rel(y, bn(xb), 1e-6)
    # torchvision.ops.FrozenBatchNorm2d.forward
    scale = frozen.weight * (frozen.running_var + frozen.eps).rsqrt()
    shift = frozen.bias - frozen.running_mean * scale
    assert_rel(y, x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), 1e-6)
    y.sum().backward(), bn(xb).sum().backward()
    assert_rel(xf.grad, xb.grad, 1e-6)
    assert list(frozen.parameters()) == [] and not frozen.running_mean.requires_grad
    assert torch.equal(frozen.running_mean, bn.running_mean)  # nothing updated in training


def test_state_dicts_move_between_it_and_batch_norms():
    bn = trained_bn()
    frozen = normlab.FrozenBatchNorm(4)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped, as torchvision does
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    for name in frozen.state_dict():
        assert torch.equal(frozen.state_dict()[name], bn.state_dict()[name]), name
    back = normlab.BatchNorm2d(4)
    back.load_state_dict(frozen.state_dict())  # an old-style checkpoint: num_batches_tracked starts at 0
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(back.eval()(x), frozen(x))
    assert "FrozenBatchNorm(4, eps=1e-05)" in repr(frozen)


def test_from_batchnorm_keeps_device_dtype_and_map():
    bn = trained_bn(normlab.BatchNorm1d, (8, 4)).double()
    frozen = normlab.FrozenBatchNorm.from_batchnorm(bn)
    assert frozen.running_var.dtype == torch.float64
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(frozen(x), bn(x))
    no_bias = normlab.BatchNorm2d(4, bias=False).eval()
    assert torch.equal(normlab.FrozenBatchNorm.from_batchnorm(no_bias).bias, torch.zeros(4))
    with pytest.raises(ValueError, match="no running statistics"):
        normlab.FrozenBatchNorm.from_batchnorm(torch.nn.BatchNorm2d(4, track_running_stats=False))


@given(
    shape=st.sampled_from([(3, 2), (2, 2, 3), (2, 2, 2, 2), (1, 2, 2, 1, 2)]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(1, 3, size=shape)
    rm, rv, w, b = rng.normal(size=2), rng.uniform(0.1, 5, size=2), rng.normal(size=2), rng.normal(size=2)
    frozen = normlab.FrozenBatchNorm(2, eps=1e-3).double()
    for name, v in zip(("running_mean", "running_var", "weight", "bias"), (rm, rv, w, b)):
        getattr(frozen, name).copy_(torch.tensor(v))
    assert_rel(frozen(torch.tensor(x)), R.batch_norm_eval(x, rm, rv, w, b, 1e-3), 1e-12)


def test_gradcheck_and_gradgradcheck():
    frozen = normlab.FrozenBatchNorm(3).double()
    frozen.running_var.fill_(2.0), frozen.weight.fill_(-1.5)
    x = torch.randn(4, 3, 2, dtype=torch.double, requires_grad=True)
    with normlab.use_backend("normlab"):
        assert torch.autograd.gradcheck(frozen, (x,))
        assert torch.autograd.gradgradcheck(frozen, (x,))


def test_bad_input_names_the_layer():
    frozen = normlab.FrozenBatchNorm(4)
    with pytest.raises(ValueError, match=r"FrozenBatchNorm\(4\): expected 4 channels in dim 1 of the input, got 3"):
        frozen(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"FrozenBatchNorm\(4\): expected a 2-D \(N, C\) or 3-D .* got a 1-D"):
        frozen(torch.randn(4))
    with pytest.raises(TypeError, match=r"FrozenBatchNorm\(4\): expected a floating-point input"):
        frozen(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match=r"FrozenBatchNorm\(4\): the checkpoint's 'weight' has shape \(8,\)"):
        frozen.load_state_dict(torch.nn.BatchNorm2d(8).state_dict())
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        normlab.FrozenBatchNorm(0)
