"""GhostBatchNorm and functional.ghost_batch_norm: batch norm when the virtual batch covers the
batch; torch's BatchNorm run on each virtual batch in turn otherwise (outputs, gradients,
running statistics); against the float64 reference; first and second derivatives."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import normlab
from normlab import functional as NF
from normlab import reference as R
from conftest import assert_rel


def affine_pair(ours, theirs):
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5), theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("virtual", [8, 100])
def test_is_batch_norm_when_the_virtual_batch_covers_the_batch(backend, virtual):
    ghost, bn = normlab.GhostBatchNorm(3, virtual_batch_size=virtual), normlab.BatchNorm2d(3)
    ghost, theirs = affine_pair(ghost, torch.nn.BatchNorm2d(3))
    bn.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = 2 * torch.randn(8, 3, 2, 2, generator=gen) + 1
        xg, xb, xt = (x.clone().requires_grad_() for _ in range(3))
        yg, yb, yt = ghost(xg), bn(xb), theirs(xt)
        for y in (yg, yb, yt):
            y.backward(torch.ones_like(y).cumsum(0))
        assert torch.equal(yg, yb) and torch.equal(xg.grad, xb.grad)
        assert_rel(yg, yt, 1e-5), assert_rel(xg.grad, xt.grad, 1e-5)
    for (name, a), b in zip(ghost.state_dict().items(), theirs.state_dict().values()):
        assert_rel(a, b, 1e-6, name)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape,fmt", [((10, 3), None), ((10, 3, 4), None), ((10, 3, 2, 3), torch.channels_last)])
def test_is_torch_batch_norm_on_each_virtual_batch_in_turn(backend, momentum, shape, fmt):
    """Hoffer et al.'s Alg. 1: virtual batches of 4, 4 and 2, each normalized by its own
    statistics and each updating the running statistics in turn."""
    torch_cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)]
    ghost, theirs = affine_pair(normlab.GhostBatchNorm(3, momentum=momentum, virtual_batch_size=4), torch_cls(3, momentum=momentum))
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        x = (3 * torch.randn(shape, generator=gen) + step).contiguous(memory_format=fmt or torch.contiguous_format)
        dy = torch.randn(shape, generator=gen)
        xg, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yg = ghost(xg)
        yt = torch.cat([theirs(part) for part in xt.split(4)])
        yg.backward(dy), yt.backward(dy)
        assert_rel(yg, yt, 1e-5, "output")
        assert_rel(xg.grad, xt.grad, 1e-5, "input gradient")
        if fmt is not None:
            assert yg.is_contiguous(memory_format=fmt)
    for name in ("weight", "bias"):
        assert_rel(getattr(ghost, name).grad, getattr(theirs, name).grad, 1e-5, name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_rel(getattr(ghost, name), getattr(theirs, name), 1e-6, name)
    assert ghost.num_batches_tracked.item() == 6  # three virtual batches per step
    ghost.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen)
    assert_rel(ghost(x), theirs(x), 1e-5, "eval output")


@given(
    n=st.integers(2, 9),
    virtual=st.integers(2, 5),
    rest=st.sampled_from([(), (3,), (2, 2)]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(n, virtual, rest, affine, seed):
    if n % virtual == 1:  # a last virtual batch of one sample: see the policy test
        n += 1
    rng = np.random.default_rng(seed)
    shape = (n, 2, *rest)
    x, dy = rng.normal(2, 3, size=shape), rng.normal(size=shape)
    w, b = (rng.normal(size=2), rng.normal(size=2)) if affine else (None, None)
    y_ref, caches = R.ghost_batch_norm_train(x, virtual, w, b)
    dx_ref, dw_ref, db_ref = R.ghost_batch_norm_backward(dy, caches)
    rm, rv, tracked = np.zeros(2), np.ones(2), 0
    for c in caches:
        rm, rv, tracked = R.update_running_stats(rm, rv, c.mean, c.var, c.count, 0.3, tracked)

    layer = normlab.GhostBatchNorm(2, momentum=0.3, affine=affine, virtual_batch_size=virtual).double()
    if affine:
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(w)), layer.bias.copy_(torch.tensor(b))
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(xt.grad, dx_ref, 1e-8, "dx")
    if affine:
        assert_rel(layer.weight.grad, dw_ref, 1e-10, "dgamma")
        assert_rel(layer.bias.grad, db_ref, 1e-10, "dbeta")
    assert_rel(layer.running_mean, rm, 1e-12, "running_mean")
    assert_rel(layer.running_var, rv, 1e-12, "running_var")
    assert layer.num_batches_tracked.item() == tracked


def test_functional_form_is_the_module():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 2, generator=gen)
    layer = normlab.GhostBatchNorm(3, virtual_batch_size=3)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = NF.ghost_batch_norm(x, rm, rv, layer.weight, layer.bias, True, 0.1, 1e-5, 3)
    assert torch.equal(layer(x), y)
    assert torch.equal(layer.running_mean, rm) and torch.equal(layer.running_var, rv)


def test_gradcheck_and_gradgradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.double, generator=gen, requires_grad=True)
    w = torch.randn(2, dtype=torch.double, generator=gen, requires_grad=True)
    b = torch.randn(2, dtype=torch.double, generator=gen, requires_grad=True)

    def f(x, w, b):
        return NF.ghost_batch_norm(x, None, None, w, b, True, 0.1, 1e-3, virtual_batch_size=2)

    with normlab.use_backend("normlab"):
        assert torch.autograd.gradcheck(f, (x, w, b))
        assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_inference_uses_the_running_statistics_not_virtual_batches():
    layer = normlab.GhostBatchNorm(3, virtual_batch_size=2)
    layer(torch.randn(8, 3) * 3 + 1)
    layer.eval()
    x = torch.randn(8, 3)
    assert torch.equal(layer(x)[:1], layer(x[:1]))


def test_a_last_virtual_batch_of_one_sample_follows_the_policy():
    layer = normlab.GhostBatchNorm(3, virtual_batch_size=4)
    with pytest.raises(ValueError, match=r"GhostBatchNorm\(3\): training needs more than one value per channel.*\(1, 3\)"):
        layer(torch.randn(9, 3))
    assert layer.num_batches_tracked.item() == 0  # the two virtual batches before it are undone too
    assert torch.equal(layer.running_mean, torch.zeros(3))
    layer.one_value_per_channel = "skip_update"
    y = layer(torch.randn(9, 3))
    assert torch.equal(y[8], layer.bias.detach()) and layer.num_batches_tracked.item() == 2


def test_bad_virtual_batch_size():
    with pytest.raises(ValueError, match=r"GhostBatchNorm\(3\): virtual_batch_size must be a positive int, got 0"):
        normlab.GhostBatchNorm(3, virtual_batch_size=0)
    with pytest.raises(ValueError, match="ghost_batch_norm: virtual_batch_size must be a positive int"):
        NF.ghost_batch_norm(torch.randn(4, 3), None, None, training=True, virtual_batch_size=2.5)
