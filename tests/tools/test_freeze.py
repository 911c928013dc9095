"""normlab.freeze_batchnorm: every batch norm of a model with branches and a shared layer
becomes a FrozenBatchNorm computing its inference map, in place; refusals change nothing."""

import copy

import pytest
import torch
from torch import nn

import normlab


class Block(nn.Module):
    """A residual block whose two branches share one batch norm."""

    def __init__(self, shared: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.shared = shared
        self.skip = nn.Sequential(nn.Conv2d(4, 4, 1), shared)

    def forward(self, x):
        return torch.relu(self.shared(self.bn(self.conv(x))) + self.skip(x))


def model():
    shared = normlab.BatchNorm2d(4)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), normlab.BatchRenorm2d(4), Block(shared), normlab.GhostBatchNorm(4, virtual_batch_size=4),
        normlab.SyncBatchNorm(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), torch.nn.BatchNorm1d(8),
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        net(torch.randn(8, 3, 8, 8, generator=gen))
    return net


def test_every_batch_norm_becomes_its_inference_map():
    net = model()
    reference = copy.deepcopy(net).eval()
    x = torch.randn(5, 3, 8, 8)
    out = normlab.freeze_batchnorm(net)
    assert out is net
    kinds = {type(m).__name__ for m in net.modules()}
    assert not kinds & {"BatchNorm1d", "BatchNorm2d", "BatchRenorm2d", "GhostBatchNorm", "SyncBatchNorm"}
    assert sum(isinstance(m, normlab.FrozenBatchNorm) for m in net.modules()) == 6  # the shared one once
    assert net[2].shared is net[2].skip[1]  # still one layer in two places
    for mode in (True, False):
        net.train(mode)
        torch.testing.assert_close(net(x), reference(x), rtol=1e-5, atol=1e-6)
    assert all(not isinstance(m, normlab.FrozenBatchNorm) for m in net.modules() if list(m.parameters(recurse=False)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()(x)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing updated


def test_a_batch_norm_itself_is_returned_frozen():
    frozen = normlab.freeze_batchnorm(nn.BatchNorm1d(3).eval())
    assert isinstance(frozen, normlab.FrozenBatchNorm) and frozen.num_features == 3


def test_layers_without_running_statistics_are_named_and_nothing_changes():
    net = nn.Sequential(nn.BatchNorm1d(3), nn.Sequential(normlab.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match=r"no running statistics .*: 1\.0; nothing was changed"):
        normlab.freeze_batchnorm(net)
    assert type(net[0]) is nn.BatchNorm1d
