"""torch's ``SyncBatchNorm.convert_sync_batchnorm``: every ``_BatchNorm`` becomes a
``torch.nn.SyncBatchNorm`` holding its parameters, buffers, options and training mode.

What that gives up against ``normlab.convert_sync_batchnorm`` (docs/layers.md says it):
torch's converter builds a plain SyncBatchNorm whatever the layer was, so a variant loses
what made it one -- batch renormalization its r/d correction, ghost batch norm its virtual
batches (normlab's converter leaves it local, by design), BatchNormAct its activation.
Outside a process group (as here) torch's SyncBatchNorm is torch's batch norm.
"""

import pytest
from torch import nn

import normlab
from conftest import assert_rel
from interop_cases import BOTH, SPATIAL, batch_norm, rand, randomize

STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@BOTH
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_torch_converter_converts_batch_norm(lib, dim):
    x = rand(4, 3, *SPATIAL[dim])
    model = randomize(nn.Sequential(batch_norm(lib, dim, 3, eps=1e-3, momentum=0.2), nn.ReLU()), x)
    bn = model[0]
    state = {name: getattr(bn, name) for name in STATE}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sync = converted[0]
    assert type(sync) is nn.SyncBatchNorm
    assert all(getattr(sync, name) is t for name, t in state.items())  # the very parameter and buffer objects
    assert (sync.eps, sync.momentum, sync.affine, sync.track_running_stats, sync.training) == (1e-3, 0.2, True, True, True)
    reference = randomize(nn.Sequential(batch_norm(nn, dim, 3, eps=1e-3, momentum=0.2), nn.ReLU()), x)
    assert_rel(converted(x), reference(x), 1e-5, "training output")
    converted.eval(), reference.eval()
    assert_rel(converted(x), reference(x), 1e-5, "eval output")


def test_torch_converter_gives_up_renormalization():
    bn = normlab.BatchRenorm2d(3, rmax=1.5, dmax=0.5, warmup_steps=0, rmax_full_at=0, dmax_full_at=0)
    x = rand(8, 3, 4, 4)
    randomize(bn, x)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(converted) is nn.SyncBatchNorm and not hasattr(converted, "rmax")
    ours = normlab.convert_sync_batchnorm(bn)
    assert isinstance(ours, normlab.SyncBatchRenorm) and (ours.rmax, ours.dmax) == (1.5, 0.5)


def test_torch_converter_gives_up_ghost_batches():
    bn = normlab.GhostBatchNorm(3, virtual_batch_size=2)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(converted) is nn.SyncBatchNorm and not hasattr(converted, "virtual_batch_size")
    assert normlab.convert_sync_batchnorm(bn) is bn  # ghost batches are local by design: left as they are


def test_torch_converter_gives_up_the_activation():
    """BatchNormAct("relu") is nonnegative; torch's conversion makes it plain batch norm."""
    x = rand(8, 3, 4, 4)
    bn = normlab.BatchNormAct(3, "relu")
    assert (bn(x) >= 0).all()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert type(converted) is nn.SyncBatchNorm and (converted(x) < 0).any()
    bn = normlab.BatchNormAct(3, "relu")
    ours = normlab.convert_sync_batchnorm(bn)
    assert isinstance(ours, nn.SyncBatchNorm) and (ours(x) >= 0).all()  # normlab's keeps it
