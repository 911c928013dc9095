"""normlab.doctor: each finding on a model that has the problem and not on one that has not; the model is left as it was."""

import copy

import pytest
import torch
from torch import nn

import normlab

X = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))


def mlp(bias=False, dropout=None, momentum=0.1, data=X):
    """Linear -> [Dropout] -> BN -> ReLU -> Linear, its running statistics computed on ``data``."""
    torch.manual_seed(0)
    layers = [nn.Linear(10, 16, bias=bias)] + ([nn.Dropout(dropout)] if dropout is not None else [])
    layers += [normlab.BatchNorm1d(16, momentum=momentum), nn.ReLU(), nn.Linear(16, 2)]
    model = nn.Sequential(*layers)
    normlab.precise_batchnorm(model, [data])
    return model


def codes(findings):
    return [(f.code, f.layer) for f in findings]


def test_a_healthy_model_has_no_findings():
    assert normlab.doctor(mlp().eval(), X, evaluating=True) == []
    assert normlab.doctor(mlp(), X) == []


def test_bn_training_mode():
    model = mlp()
    assert codes(normlab.doctor(model, X, evaluating=True)) == [("bn-training-mode", "(model)")]
    assert normlab.doctor(model, X, evaluating=False) == []
    model.eval()
    model[1].train()  # e.g. set back by a freeze helper
    found = normlab.doctor(model, X, evaluating=True)
    assert codes(found) == [("bn-training-mode", "1")] and "model.eval()" in found[0].fix


def test_small_batch():
    found = normlab.doctor(mlp(), X[:4])
    assert ("small-batch", "1") in codes(found)
    assert "4 sample(s), 4 value(s) per channel" in found[[f.code for f in found].index("small-batch")].message
    images = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    assert "small-batch" in [f.code for f in normlab.doctor(images, torch.randn(4, 3, 10, 10))]  # 256 values, 4 samples
    assert "small-batch" not in [f.code for f in normlab.doctor(images, torch.randn(8, 3, 10, 10))]
    # a frozen batch norm uses no batch statistics: a small batch is no problem for it
    assert "small-batch" not in [f.code for f in normlab.doctor(normlab.freeze_batchnorm(images), torch.randn(4, 3, 10, 10))]
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), normlab.BatchNorm2d(4))
    frozen[1].freeze("statistics")
    assert "small-batch" not in [f.code for f in normlab.doctor(frozen, torch.randn(4, 3, 10, 10))]


def test_bias_before_bn():
    found = normlab.doctor(mlp(bias=True), X)
    assert codes(found) == [("bias-before-bn", "0")] and "bias=False" in found[0].fix
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert codes(normlab.doctor(conv, torch.randn(8, 3, 6, 6))) == [("bias-before-bn", "0")]
    # a Linear over the last axis of (N, L, F) is not per channel of the BN over L: its bias is not wasted
    seq = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(3))
    assert normlab.doctor(seq, torch.randn(16, 3, 5)) == []


def test_bn_after_dropout():
    found = normlab.doctor(mlp(dropout=0.3), X)
    assert codes(found) == [("bn-after-dropout", "2")] and "Li et al. 2019" in found[0].message
    assert normlab.doctor(mlp(dropout=0.0), X) == []  # p = 0 is no dropout
    inplace = nn.Sequential(nn.Linear(10, 16, bias=False), nn.Dropout(0.3, inplace=True), nn.BatchNorm1d(16))
    normlab.precise_batchnorm(inplace, [X])
    assert codes(normlab.doctor(inplace, X)) == [("bn-after-dropout", "2")]  # not mistaken for bias-before-bn


def test_stats_mismatch():
    model = mlp()
    found = normlab.doctor(model, 3 * X + 5)
    assert codes(found) == [("stats-mismatch", "1")] and "precise_batchnorm" in found[0].fix
    assert normlab.doctor(model, X) == []
    fresh = nn.Sequential(nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16))
    assert normlab.doctor(fresh, 3 * X + 20) == []  # before training there is nothing to compare ...
    found = normlab.doctor(fresh.eval(), 3 * X + 20, evaluating=True)  # ... but evaluating with it is a problem
    assert codes(found) == [("stats-mismatch", "1")] and "never updated" in found[0].message


def test_dead_gamma():
    model = mlp()
    with torch.no_grad():
        model[1].weight[:3] = 0
    found = normlab.doctor(model, X)
    assert codes(found) == [("dead-gamma", "1")] and "3 of 16 channels" in found[0].message


def test_recurrent_bn():
    class RNN(nn.Module):
        def __init__(self, per_step):
            super().__init__()
            self.cell = nn.Linear(8, 8, bias=False)
            self.bns = nn.ModuleList([nn.BatchNorm1d(8) for _ in range(3)]) if per_step else None
            self.bn = nn.BatchNorm1d(8)

        def forward(self, x):  # x: (N, T, 8)
            h = torch.zeros_like(x[:, 0])
            for t in range(x.shape[1]):
                bn = self.bns[t] if self.bns is not None else self.bn
                h = torch.tanh(bn(self.cell(h + x[:, t])))
            return h

    x = torch.randn(32, 3, 8)
    found = normlab.doctor(RNN(per_step=False), x)
    assert codes(found) == [("recurrent-bn", "bn")] and "called 3 times" in found[0].message
    assert normlab.doctor(RNN(per_step=True), x) == []


@pytest.mark.parametrize("momentum,found", [(0.99, True), (0.9, True), (0.5, True), (0.1, False), (None, False)])
def test_keras_momentum(momentum, found):
    findings = normlab.doctor(mlp(momentum=momentum), X)
    assert codes(findings) == ([("keras-momentum", "1")] if found else [])
    if momentum == 0.99:
        assert "momentum=0.01" in findings[0].fix


def test_state_is_restored():
    model = mlp(bias=True, dropout=0.5, momentum=0.9)
    model.eval()
    model[2].train()
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    findings = normlab.doctor(model, 3 * X[:4] + 1, evaluating=True)
    assert {f.code for f in findings} == {
        "bn-training-mode", "keras-momentum", "bn-after-dropout", "small-batch", "stats-mismatch"
    }  # fmt: skip
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert str(findings[0]).startswith("[bn-training-mode] 2: ") and "\n    fix: " in str(findings[0])
