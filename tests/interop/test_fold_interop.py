"""torch's own batch-norm folding: ``torch.nn.utils.fusion.fuse_conv_bn_eval`` and
``fuse_linear_bn_eval`` (which read the layer's running statistics, affine parameters and
eps), and ``torch.fx.experimental.optimization.fuse`` (which traces the model and folds
``(type(conv), type(bn))`` pairs it finds, torch.nn's exact classes only)."""

import copy

import pytest
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

import normlab
from conftest import assert_rel
from interop_cases import BOTH, CONV, CONV_TRANSPOSE, SPATIAL, batch_norm, norm_types, rand, randomize


@BOTH
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("transpose", [False, True])
def test_fuse_conv_bn_eval(lib, dim, transpose):
    torch.manual_seed(0)
    conv, x = (CONV_TRANSPOSE if transpose else CONV)[dim](3, 4, 3), rand(2, 3, *SPATIAL[dim])
    model = randomize(nn.Sequential(conv, batch_norm(lib, dim, 4)), x).eval()
    fused = fuse_conv_bn_eval(model[0], model[1], transpose=transpose)
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "folded conv")


@BOTH
def test_fuse_linear_bn_eval(lib):
    torch.manual_seed(0)
    x = rand(8, 5)
    model = randomize(nn.Sequential(nn.Linear(5, 4), lib.BatchNorm1d(4)), x).eval()
    fused = fuse_linear_bn_eval(model[0], model[1])
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "folded linear")


@pytest.mark.parametrize(
    "make",
    [
        lambda: normlab.BatchRenorm2d(4, warmup_steps=0, rmax_full_at=0, dmax_full_at=0),
        lambda: normlab.GhostBatchNorm(4, virtual_batch_size=1),
        lambda: normlab.SyncBatchNorm(4),
    ],
    ids=["BatchRenorm2d", "GhostBatchNorm", "SyncBatchNorm"],
)
def test_fuse_conv_bn_eval_folds_variants_with_batch_norms_inference_map(make):
    """Renormalization, ghost batches and synchronization change training only: their
    inference map is batch norm's, so torch's fold is exact for them too."""
    torch.manual_seed(0)
    x = rand(4, 3, 6, 5)
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), make()), x).eval()
    fused = fuse_conv_bn_eval(model[0], model[1])
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "folded conv")


class ConvNet(nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), lib.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv1d(4, 4, 1), lib.BatchNorm1d(4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(y.flatten(2)))


@BOTH
def test_fx_optimization_fuse_folds_torch_batch_norms(lib):
    """FX's inference fusion sees torch's layers; normlab's, converted to torch's (the same
    parameter and buffer objects), fold the same."""
    torch.manual_seed(0)
    x = rand(2, 3, 6, 5)
    model = randomize(ConvNet(lib), x).eval()
    fused = fx_fuse(normlab.convert(copy.deepcopy(model), to="torch"))
    assert norm_types(fused) == []
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "fused model")


def test_fx_optimization_fuse_leaves_normlab_layers_unfolded():
    """fuse matches the exact classes (nn.Conv2d, nn.BatchNorm2d): a normlab layer, whether the
    tracer keeps it whole or traces into it, is not folded (the conv keeps its weights); the
    traced model computes the same. Hence ``normlab.convert(model, to="torch")`` first."""
    torch.manual_seed(0)
    x = rand(2, 3, 6, 5)
    model = randomize(ConvNet(normlab), x).eval()
    fused = fx_fuse(model)
    assert torch.equal(fused.conv1.weight, model.conv1.weight)
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "traced model")
