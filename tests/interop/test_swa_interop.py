"""``torch.optim.swa_utils.update_bn``: for every ``_BatchNorm`` of the model it resets the
running statistics, sets ``momentum=None`` (the cumulative average), runs the loader once in
training mode, then puts momentum and the training mode back. The running statistics are
then the averages over the loader's batches of the batch mean and unbiased variance."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import normlab
from conftest import assert_rel
from interop_cases import BOTH, rand

SIZES = (5, 3, 4, 6)  # uneven batches: a cumulative average weighs each batch, not each sample


def loader(channels=3, spatial=(4, 5)):
    return [rand(n, channels, *spatial, seed=i) * (1 + i) + i for i, n in enumerate(SIZES)]


def batch_statistics(batches):
    """The averages update_bn must end with, for a batch norm at the model's input."""
    means = [x.transpose(0, 1).flatten(1).mean(1) for x in batches]
    variances = [x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in batches]
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


def spoil(bn):
    with torch.no_grad():
        bn.running_mean.fill_(100.0), bn.running_var.fill_(1e-3), bn.num_batches_tracked.fill_(7)


@BOTH
def test_update_bn_recomputes_the_statistics(lib):
    torch.manual_seed(0)
    model = nn.Sequential(lib.BatchNorm2d(3, momentum=0.3), nn.Conv2d(3, 4, 3), lib.BatchNorm2d(4)).eval()
    spoil(model[0]), spoil(model[2])
    batches = loader()
    update_bn(batches, model)
    mean, var = batch_statistics(batches)
    assert_rel(model[0].running_mean, mean, 1e-5, "running_mean")
    assert_rel(model[0].running_var, var, 1e-5, "running_var")
    with torch.no_grad():
        mean, var = batch_statistics([model[1](model[0].train()(x)) for x in batches])
    assert_rel(model[2].running_mean, mean, 1e-5, "second layer's running_mean")
    assert_rel(model[2].running_var, var, 1e-5, "second layer's running_var")
    assert model[0].momentum == 0.3 and model[2].momentum == 0.1  # put back
    assert model[2].num_batches_tracked.item() == len(SIZES)
    assert not model[2].training  # put back


@BOTH
def test_update_bn_gives_torchs_statistics(lib):
    """The same model built from torch's layers and from ``lib``'s ends with the same statistics."""
    def build(lib):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), lib.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(24, 5),
                             lib.BatchNorm1d(5))  # fmt: skip

    ours, torchs = build(lib), build(nn)
    update_bn(loader(), ours), update_bn(loader(), torchs)
    for (name, a), b in zip(ours.named_buffers(), torchs.buffers()):
        assert_rel(a, b, 1e-5, name)


@pytest.mark.parametrize(
    "make",
    [
        lambda: normlab.BatchRenorm2d(3, warmup_steps=0, rmax_full_at=0, dmax_full_at=0),
        lambda: normlab.SyncBatchNorm(3),
        lambda: normlab.BatchNormAct(3, "relu"),
    ],
    ids=["BatchRenorm2d", "SyncBatchNorm", "BatchNormAct"],
)
def test_update_bn_recomputes_the_statistics_of_variants(make):
    """Renormalization normalizes against running statistics that update_bn has just reset;
    its running statistics are still batch norm's averages of the batch statistics."""
    bn = make()
    spoil(bn)
    batches = loader()
    update_bn(batches, bn)
    mean, var = batch_statistics(batches)
    assert_rel(bn.running_mean, mean, 1e-5, "running_mean")
    assert_rel(bn.running_var, var, 1e-5, "running_var")


def test_update_bn_averages_ghost_batch_norm_over_virtual_batches():
    """Ghost batch norm updates once per virtual batch: the cumulative average is over them."""
    bn = normlab.GhostBatchNorm(3, virtual_batch_size=2)
    spoil(bn)
    batches = loader()
    update_bn(batches, bn)
    mean, var = batch_statistics([v for x in batches for v in x.split(2)])
    assert_rel(bn.running_mean, mean, 1e-5, "running_mean")
    assert_rel(bn.running_var, var, 1e-5, "running_var")
    assert bn.num_batches_tracked.item() == sum(-(-n // 2) for n in SIZES)


def test_update_bn_leaves_frozen_batch_norm_alone():
    """FrozenBatchNorm's statistics are fixed by definition, as torchvision's FrozenBatchNorm2d,
    which update_bn does not touch."""
    source = nn.BatchNorm2d(3)
    spoil(source)
    frozen = normlab.FrozenBatchNorm.from_batchnorm(source)
    update_bn(loader(), frozen)
    assert_rel(frozen.running_mean, torch.full((3,), 100.0), 0, "running_mean")
    assert_rel(frozen.running_var, torch.full((3,), 1e-3), 0, "running_var")
