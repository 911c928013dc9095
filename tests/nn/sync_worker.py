"""What each of the two gloo processes of tests/nn/test_sync.py runs (a plain module, so that
spawned processes import it without pytest).

Every rank builds the same data from a seed, runs its share of the batch through the
synchronized layer and, beside it, the whole concatenated batch through the local layer
in one process; then compares its outputs and input gradients with its slice of the
local ones, the sum over ranks of its parameter gradients with the local parameter
gradients, and its running statistics with the local ones. A mismatch raises, which
fails the spawning test with this traceback.
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist

import normlab


def assert_close(actual, expected, rel, what):
    err = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    scale = max(expected.double().abs().max().item() if expected.numel() else 0.0, 1e-12)
    assert err <= rel * scale, f"rank {dist.get_rank()}, {what}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def compare(make_sync, make_local, sizes, shape, dtype, rel, masked=False, steps=3, seed=0):
    """``sizes[r]`` samples on rank r; input ``(N, *shape)``."""
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(seed)
    sync, local = make_sync().to(dtype), make_local().to(dtype)
    local.load_state_dict(sync.state_dict())
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    for step in range(steps):
        x = (3 * torch.randn(sum(sizes), *shape, generator=gen) + 10 * step + 5).to(dtype)
        dy = torch.randn(x.shape, generator=gen).to(dtype)
        mask = torch.rand(sum(sizes), *shape[1:], generator=gen) < 0.7 if masked else None
        xs, xl = x[start:stop].clone().requires_grad_(), x.clone().requires_grad_()
        ys = sync(xs, None if mask is None else mask[start:stop])
        yl = local(xl, mask)
        (ys * dy[start:stop]).sum().backward()
        (yl * dy).sum().backward()
        assert_close(ys, yl[start:stop], rel, f"step {step} output")
        assert_close(xs.grad, xl.grad[start:stop], rel, f"step {step} input gradient")
    for name in ("weight", "bias"):
        grad = getattr(sync, name).grad.clone()
        dist.all_reduce(grad)  # what DDP does (up to its division by the world size)
        assert_close(grad, getattr(local, name).grad, rel, f"{name} gradient summed over ranks")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_close(getattr(sync, name), getattr(local, name), rel, name)
    sync.eval(), local.eval()
    x = torch.randn(3, *shape, generator=gen).to(dtype)
    assert_close(sync(x), local(x), rel, "eval output")


def renorm(cls):
    layer = cls(3, momentum=0.3, warmup_steps=0, rmax_full_at=0, dmax_full_at=0, rmax=1.5, dmax=0.5)
    with torch.no_grad():  # running statistics the batch statistics are clipped against
        layer.running_mean.copy_(torch.tensor([4.0, 6.0, 5.0]))
        layer.running_var.copy_(torch.tensor([9.0, 2.0, 30.0]))
    return layer


def affine(layer):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return layer


def run(rank, world_size, port, scenarios, done_dir):
    if sys.platform.startswith("linux"):  # loopback, whatever the machine's hostname resolves to
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        for name in scenarios:
            SCENARIOS[name]()
        # Passed. Said before the teardown, which in some torch versions (2.7) now and then
        # hangs in gloo's destroy_process_group (pytorch/pytorch#75097).
        open(os.path.join(done_dir, f"rank{rank}.passed"), "w").close()
    finally:
        dist.destroy_process_group()


def equal_batches_float32():
    compare(lambda: affine(normlab.SyncBatchNorm(3)), lambda: normlab.BatchNorm2d(3), [4, 4], (3, 2, 2), torch.float32, 1e-5)


def unequal_batches():
    compare(lambda: affine(normlab.SyncBatchNorm(3)), lambda: normlab.BatchNorm1d(3), [5, 2], (3, 4), torch.float64, 1e-10)


def one_rank_empty():
    compare(lambda: affine(normlab.SyncBatchNorm(3, momentum=None)), lambda: normlab.BatchNorm2d(3, momentum=None),
            [0, 6], (3, 2, 2), torch.float64, 1e-10)


def renormalization():
    compare(lambda: affine(renorm(normlab.SyncBatchRenorm)), lambda: renorm(normlab.BatchRenorm1d), [3, 6], (3, 4),
            torch.float64, 1e-10)


def masked_sequences():
    compare(lambda: affine(normlab.SyncBatchNorm(3)), lambda: normlab.BatchNorm1d(3), [3, 2], (3, 5), torch.float64,
            1e-10, masked=True)


def double_backward_is_refused():
    bn = normlab.SyncBatchNorm(3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    try:  # a differentiable gradient (create_graph) would need the other ranks' statistics as functions
        torch.autograd.grad((bn(x) ** 3).sum(), x, create_graph=True)
    except RuntimeError as e:
        assert "cannot be differentiated twice" in str(e), e
    else:
        raise AssertionError("double backward through SyncBatchNorm did not raise")


def a_rank_refuses_its_batch():
    """Rank 1 gives a wrong channel count: it raises its own error, rank 0 one that names rank 1 (not
    gloo's "connection closed" once rank 1 has gone), and the group still works for the next step."""
    rank = dist.get_rank()
    bn = normlab.SyncBatchNorm(3)
    bn.to(torch.float64).train()
    try:
        bn(torch.randn(4, 3 if rank == 0 else 5, dtype=torch.float64))
    except ValueError as e:
        assert rank == 1 and "SyncBatchNorm" in str(e) and "3" in str(e), e
    except normlab.nn.sync.PeerRefused as e:
        assert rank == 0 and "rank 1 of the process group refused its batch" in str(e), e
    else:
        raise AssertionError(f"rank {rank}: a wrong channel count on rank 1 raised nothing")
    y = bn(torch.randn(4, 3, dtype=torch.float64) + 7 * rank)  # both ranks in step again
    assert y.shape == (4, 3) and torch.isfinite(y).all()
    assert int(bn.num_batches_tracked) == 1, "the refused step counted"


SCENARIOS = {f.__name__: f for f in (
    equal_batches_float32, unequal_batches, one_rank_empty, renormalization, masked_sequences,
    double_backward_is_refused, a_rank_refuses_its_batch,
)}
