"""SyncBatchNorm and SyncBatchRenorm: two gloo processes on the CPU against one process on the
concatenated batch (tests/nn/sync_worker.py); the exact merge of per-rank moments; the
fallback outside a process group; convert_sync_batchnorm."""

import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

import normlab
import sync_worker
from conftest import assert_rel
from normlab.nn.sync import merge_moments

DEADLINE_S = 90  # a hang (a rank waiting on a collective the other never joins) fails here
TEARDOWN_S = 10  # how long both ranks, once passed, may take to tear the group down


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    """Outputs, input and parameter gradients, running statistics and eval outputs, for equal and
    unequal batch sizes, a rank with an empty batch, batch renormalization, masked sequences;
    double backward refused on both ranks; and a rank that refuses its batch named by the other."""
    context = mp.start_processes(
        sync_worker.run, args=(2, free_port(), list(sync_worker.SCENARIOS), str(tmp_path)), nprocs=2, join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    passed = [tmp_path / f"rank{r}.passed" for r in range(2)]
    while not context.join(timeout=1):  # raises ProcessRaisedException with the rank's traceback
        if all(p.exists() for p in passed):
            deadline = min(deadline, time.monotonic() + TEARDOWN_S)
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            if all(p.exists() for p in passed):
                return  # both ranks passed; what hung is torch's teardown of the group
            pytest.fail(f"the two gloo processes did not finish within {DEADLINE_S} s (a collective hung)")


@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4).filter(lambda s: sum(s) > 0),
    offsets=st.lists(st.floats(-1e4, 1e4), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_merge_of_per_rank_moments_is_the_moments_of_the_union(sizes, offsets, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(offsets[i], 1 + i, size=(n, 3)) for i, n in enumerate(sizes)]
    counts = torch.tensor([[len(p)] * 3 for p in parts], dtype=torch.float64)
    means = torch.tensor(np.array([p.mean(0) if len(p) else np.zeros(3) for p in parts]))
    m2s = torch.tensor(np.array([((p - p.mean(0)) ** 2).sum(0) if len(p) else np.zeros(3) for p in parts]))
    mean, var = merge_moments(counts, means, m2s)
    union = np.concatenate(parts)
    assert_rel(mean, union.mean(0), 1e-12, "mean")
    assert_rel(var, union.var(0), 1e-9, "var")


@pytest.mark.parametrize("cls,local", [(normlab.SyncBatchNorm, normlab.BatchNorm2d), (normlab.SyncBatchRenorm, normlab.BatchRenorm2d)])
def test_outside_a_process_group_it_is_the_local_layer(cls, local):
    """As torch's SyncBatchNorm: without an initialized process group, plain batch norm."""
    assert not torch.distributed.is_initialized()
    sync, ref = cls(3), local(3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(4, 3, 2, 2, generator=gen)
        xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        sync(xs).sum().backward(), ref(xr).sum().backward()
        assert torch.equal(xs.grad, xr.grad)
    for (name, a), b in zip(sync.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_same_arguments_and_state_dict_as_torch():
    group = object()  # stands for a process group: only stored
    ours = normlab.SyncBatchNorm(4, 1e-3, 0.2, True, True, group, None, torch.float64)
    theirs = torch.nn.SyncBatchNorm(4, 1e-3, 0.2, True, True, None, None, torch.float64)
    assert ours.process_group is group and ours.running_mean.dtype == torch.float64
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert ours(torch.randn(2, 4, 3, dtype=torch.float64)).shape == (2, 4, 3)  # any (N, C, *) input


def test_convert_sync_batchnorm_keeps_parameters_buffers_and_options():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        normlab.BatchNorm2d(4, one_value_per_channel="skip_update"),
        normlab.BatchRenorm2d(4, rmax=2.0, warmup_steps=10),
        normlab.GhostBatchNorm(4, virtual_batch_size=8),
        normlab.FrozenBatchNorm(4),
        torch.nn.Sequential(torch.nn.SyncBatchNorm(4)),
    ).eval()
    model[2].freeze("statistics")
    weights = [m.weight for m in model if hasattr(m, "weight")]
    buffers = [model[1].running_mean, model[3].num_batches_tracked]
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    out = normlab.convert_sync_batchnorm(model, process_group=None)
    assert out is model
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "SyncBatchNorm", "SyncBatchNorm", "SyncBatchRenorm", "GhostBatchNorm", "FrozenBatchNorm", "Sequential"]
    assert type(model[6][0]) is normlab.SyncBatchNorm
    assert [m.weight for m in model if hasattr(m, "weight")] == weights  # the same Parameter objects
    assert all(a is b for a, b in zip(weights, [m.weight for m in model if hasattr(m, "weight")]))
    assert model[1].running_mean is buffers[0] and model[3].num_batches_tracked is buffers[1]
    assert model[2].frozen_statistics and model[2].one_value_per_channel == "skip_update"
    assert (model[3].rmax, model[3].warmup_steps) == (2.0, 10) and not model[1].training
    assert torch.equal(model(x), before)
    root = normlab.convert_sync_batchnorm(normlab.BatchNorm1d(3))
    assert type(root) is normlab.SyncBatchNorm
