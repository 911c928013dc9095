"""BatchNormAct: batch norm + activation (+ residual) as one layer, and in-place activated BN."""

import pytest
import torch

import normlab
from conftest import assert_rel

TORCH_ACT = {
    "identity": torch.nn.Identity(),
    "relu": torch.nn.ReLU(),
    "leaky_relu": torch.nn.LeakyReLU(0.2),
    "elu": torch.nn.ELU(0.5),
    "silu": torch.nn.SiLU(),
    "sigmoid": torch.nn.Sigmoid(),
}


@pytest.mark.parametrize("activation", TORCH_ACT)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (4, 3, 2, 3), (2, 3, 2, 2, 3)], ids=lambda s: f"{len(s)}d")
def test_is_torch_batch_norm_then_activation(backend, activation, shape):
    gen = torch.Generator().manual_seed(0)
    ours = normlab.BatchNormAct(3, activation, negative_slope=0.2, alpha=0.5, momentum=None)
    bn = torch.nn.BatchNorm1d(3, momentum=None)  # the math is the same for every rank
    with torch.no_grad():
        for layer in (ours, bn):
            layer.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
            layer.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    flat = lambda x: x.reshape(x.shape[0], 3, -1)  # noqa: E731
    for _ in range(2):
        x = 2 * torch.randn(shape, generator=gen) + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), TORCH_ACT[activation](bn(flat(xb))).reshape(shape)
        dy = torch.randn(shape, generator=gen)
        ya.backward(dy), yb.backward(dy)
        assert_rel(ya, yb, 1e-5, "y")
        assert_rel(xa.grad, xb.grad, 1e-4, "dx")
    assert_rel(ours.weight.grad, bn.weight.grad, 1e-5, "dweight")
    assert_rel(ours.running_var, bn.running_var, 1e-6, "running_var")
    ours.eval(), bn.eval()
    assert_rel(ours(x), TORCH_ACT[activation](bn(flat(x))).reshape(shape), 1e-5, "eval")


def test_residual_is_added_before_the_activation(backend):
    x, r = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    bn, ours = torch.nn.BatchNorm2d(3), normlab.BatchNormAct(3, "relu")
    assert_rel(ours(x, residual=r), torch.relu(bn(x) + r), 1e-6, "y")


def test_loads_a_batchnorm2d_checkpoint():
    torch_bn = torch.nn.BatchNorm2d(5)
    torch_bn(torch.randn(4, 5, 3, 3))
    ours = normlab.BatchNormAct(5, "silu")
    ours.load_state_dict(torch_bn.state_dict())
    assert ours.state_dict().keys() == torch_bn.state_dict().keys()
    assert torch.equal(ours.running_mean, torch_bn.running_mean)


def test_inplace_abn_scales_by_abs_weight_plus_eps_in_both_modes():
    gen = torch.Generator().manual_seed(0)
    abn = normlab.BatchNormAct(3, "leaky_relu", eps=1e-3, inplace_abn=True)
    ref = torch.nn.BatchNorm2d(3, eps=1e-3)
    with torch.no_grad():
        abn.weight.copy_(torch.tensor([-2.0, 0.0, 0.5]))
        ref.weight.copy_(abn.weight.abs() + 1e-3)
    x = torch.randn(4, 3, 2, 2, generator=gen)
    assert_rel(abn(x), torch.nn.functional.leaky_relu(ref(x), 0.01), 1e-6, "train")
    abn.eval(), ref.eval()
    assert_rel(abn(x), torch.nn.functional.leaky_relu(ref(x), 0.01), 1e-6, "eval")
    assert "activation='leaky_relu', negative_slope=0.01, inplace_abn=True" in repr(abn)


def test_bad_configuration_and_input_name_the_layer():
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): unknown activation 'gelu'"):
        normlab.BatchNormAct(3, "gelu")
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): in-place activated batch norm .* got 'silu'"):
        normlab.BatchNormAct(3, "silu", inplace_abn=True)
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): .* got 'elu' with parameter -1.0"):
        normlab.BatchNormAct(3, "elu", alpha=-1.0, inplace_abn=True)
    bn = normlab.BatchNormAct(3)
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): expected 3 channels in dim 1 .* got 4"):
        bn(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): expected a residual of the input's shape "
                                         r"\(2, 3, 5\), got \(2, 3\)"):
        bn(torch.randn(2, 3, 5), residual=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): in-place activated batch norm takes no residual"):
        normlab.BatchNormAct(3, "identity", inplace_abn=True)(torch.randn(2, 3), residual=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"BatchNormAct\(3\): training needs more than one value per channel"):
        bn(torch.randn(1, 3))
