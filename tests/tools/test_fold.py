"""normlab.fold_batchnorm: same eval outputs, every foldable batch norm gone, the rest made affine, the user's model untouched."""

import copy
import pathlib
import subprocess
import sys

import pytest
import torch
from bn_models import FOLDABLE, NOT_FOLDABLE, randomize_batchnorm, resnet_style
from conftest import assert_rel
from torch import nn

import normlab
from normlab.tools import ChannelAffine
from normlab.tools._common import is_batchnorm

ROOT = pathlib.Path(__file__).resolve().parents[2]


def batchnorms(model):
    return [name for name, m in model.named_modules() if is_batchnorm(m)]


def test_resnet_style_model():
    model = resnet_style().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    result = normlab.fold_batchnorm(model, x)  # the example input shows the Linear's output is (N, features)
    folded = result.model
    with torch.no_grad():
        assert_rel(folded(x), model(x), 1e-5, "folded vs original")
    assert set(result.folded) == FOLDABLE
    assert {name for name, _ in result.affine} == NOT_FOLDABLE
    assert batchnorms(folded) == [] and result.kept == [] and result.untraced == []
    assert all(isinstance(folded.get_submodule(bn), nn.Identity) for _, bn in FOLDABLE)
    assert all(isinstance(folded.get_submodule(bn), ChannelAffine) for bn in NOT_FOLDABLE)
    reasons = dict(result.affine)
    assert "called 2 times" in reasons["shared.bn1"]
    assert "also used by add" in reasons["reuse.bn"]
    assert "follows relu" in reasons["post"]
    assert "stem.0 <- stem.1" in str(result) and "reuse.bn: the output of reuse.conv" in str(result)
    # each folded BN of C channels drops 4C numbers (gamma, beta, running mean and variance); a conv
    # without bias gains C, and each ChannelAffine keeps 2C
    width = {bn: model.get_submodule(bn).num_features for bn in NOT_FOLDABLE | {bn for _, bn in FOLDABLE}}
    gained = sum(width[bn] for layer, bn in FOLDABLE if model.get_submodule(layer).bias is None)
    dropped = sum(4 * width[bn] for _, bn in FOLDABLE) + sum(2 * width[bn] for bn in NOT_FOLDABLE)
    total = normlab.summary(model, (3, 8, 8)).total
    assert result.parameters == (total, total - dropped + gained)
    assert f"{total:,} -> {total - dropped + gained:,}" in str(result)
    # the user's model is untouched
    assert len(batchnorms(model)) == len(FOLDABLE) + len(NOT_FOLDABLE)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


LAYERS = [
    (nn.Conv1d, 1, 1), (nn.Conv2d, 2, 2), (nn.Conv3d, 3, 1),
    (nn.ConvTranspose1d, 1, 2), (nn.ConvTranspose2d, 2, 1), (nn.ConvTranspose2d, 2, 2), (nn.ConvTranspose3d, 3, 2),
]  # fmt: skip
BNS = {1: (nn.BatchNorm1d, normlab.BatchNorm1d), 2: (nn.BatchNorm2d, normlab.BatchNorm2d), 3: (nn.BatchNorm3d, normlab.BatchNorm3d)}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ours", [False, True], ids=["torch_bn", "normlab_bn"])
@pytest.mark.parametrize("cls,dims,groups", LAYERS, ids=[f"{c.__name__}-g{g}" for c, _, g in LAYERS])
def test_each_layer_kind_and_weight_layout(cls, dims, groups, ours, bias):
    torch.manual_seed(0)
    conv = cls(4, 6, 3, groups=groups, bias=bias)
    model = randomize_batchnorm(nn.Sequential(conv, BNS[dims][ours](6))).eval()
    x = torch.randn(2, 4, *[5] * dims)
    result = normlab.fold_batchnorm(model)
    assert result.folded == [("0", "1")]
    assert result.model[0].bias is not None and result.model[0].weight.shape == conv.weight.shape
    with torch.no_grad():
        assert_rel(result.model(x), model(x), 1e-5)


@pytest.mark.parametrize("affine", [True, False])
def test_linear_and_float64(affine):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3, affine=affine)).double().eval()
    randomize_batchnorm(model)
    x = torch.randn(4, 5, dtype=torch.float64)
    folded = normlab.fold_batchnorm(model, x).model
    assert folded[0].weight.dtype == torch.float64
    with torch.no_grad():
        assert_rel(folded(x), model(x), 1e-12)


def test_untraceable_model_falls_back_to_submodules_and_sequential_order():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.mean() > 0 else -x  # torch.fx cannot trace this

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), DataDependent(), nn.Conv2d(8, 8, 1), normlab.BatchNorm2d(8))
            self.conv = nn.Conv2d(8, 8, 1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            x = self.body(self.features(x))
            if x.std() > 0:  # data-dependent control flow
                x = x + 1
            y = self.conv(x)
            return self.bn(y) + y  # by module order conv -> bn, but y is used again: must not fold

    torch.manual_seed(0)
    model = randomize_batchnorm(Gated()).eval()
    result = normlab.fold_batchnorm(model)
    assert set(result.folded) == {("features.0", "features.1"), ("body.0", "body.1"), ("body.3", "body.4")}
    assert [name for name, _ in result.affine] == ["bn"]
    assert "(model) cannot be traced" in result.affine[0][1]
    assert [name for name, _ in result.untraced] == ["(model)", "body"]
    assert "torch.fx could not trace 2 module(s)" in str(result)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert_rel(result.model(x), model(x), 1e-5)


def test_shared_parameters_and_registrations_are_not_folded():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight  # tied weights
    conv = nn.Conv2d(3, 3, 1)
    model = nn.ModuleDict({"a": a, "b": b, "bn": nn.BatchNorm1d(4), "conv": conv, "bn2": nn.BatchNorm2d(3)})

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model
            self.alias = conv  # the same conv registered twice
            self.alias_bn = model["bn2"]  # and the same batch norm

        def forward(self, x, img):
            return self.m["bn"](self.m["a"](x)) + self.m["b"](x), self.m["bn2"](self.m["conv"](img))

    tied = randomize_batchnorm(Tied()).eval()
    result = normlab.fold_batchnorm(tied)
    assert result.folded == []
    reasons = dict(result.affine)
    assert "shares its parameters" in reasons["m.bn"] and "registered at several places" in reasons["m.bn2"]
    assert batchnorms(result.model) == []  # replaced under both its names
    assert result.model.alias_bn is result.model.m["bn2"]
    x, img = torch.randn(2, 4), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        for got, want in zip(result.model(x, img), tied(x, img)):
            assert_rel(got, want, 1e-5)


def test_other_batch_norm_kinds_and_other_normalizations():
    class FrozenBatchNorm2d(nn.Module):
        """torchvision's: batch-norm buffers without the _BatchNorm base class."""

        def __init__(self, c):
            super().__init__()
            for name, init in [("weight", torch.rand(c) + 0.5), ("bias", torch.randn(c)),
                               ("running_mean", torch.randn(c)), ("running_var", torch.rand(c) + 0.5)]:
                self.register_buffer(name, init)
            self.eps = 1e-5

        def forward(self, x):
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            return x * scale[:, None, None] + (self.bias - self.running_mean * scale)[:, None, None]

    class BatchNormAct2d(nn.BatchNorm2d):
        """timm's: a batch norm with the activation inside; its eval map is not affine."""

        def forward(self, x):
            return torch.relu(super().forward(x))

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.Conv2d(4, 4, 1), FrozenBatchNorm2d(4),
        nn.Conv2d(4, 4, 1), BatchNormAct2d(4),
        nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
        nn.LayerNorm([5, 5]),
    )  # fmt: skip
    randomize_batchnorm(model).eval()
    result = normlab.fold_batchnorm(model)
    assert result.folded == [("0", "1"), ("2", "3")]
    assert [name for name, _ in result.kept] == ["5"] and "activation" in result.kept[0][1]
    kinds = [type(m).__name__ for m in result.model]
    assert kinds[5:] == ["BatchNormAct2d", "Conv2d", "GroupNorm", "InstanceNorm2d", "LayerNorm"]
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert_rel(result.model(x), model(x), 1e-5)


def test_a_lone_batch_norm_becomes_an_affine():
    bn = randomize_batchnorm(normlab.BatchNorm2d(3)).eval()
    result = normlab.fold_batchnorm(bn)
    assert isinstance(result.model, ChannelAffine) and result.affine[0][0] == "(model)"
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert_rel(result.model(x), bn(x), 1e-6)


def test_refuses_training_mode_and_missing_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), normlab.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"training mode.*1 \(BatchNorm2d\(4\)\).*model.eval\(\)"):
        normlab.fold_batchnorm(model)
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match="training mode"):
        normlab.fold_batchnorm(model)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match=r"1 \(BatchNorm2d\(4\)\) keep no running statistics"):
        normlab.fold_batchnorm(model)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    model[1].running_var[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        normlab.fold_batchnorm(model)


@pytest.mark.slow
def test_benchmark_runs_quick():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_fold.py"), "--quick"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "folded / unfolded" in out.stdout
