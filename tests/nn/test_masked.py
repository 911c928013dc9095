"""Masked statistics for padded sequences: forward(x, mask) takes the batch statistics over
the real positions only, which makes it batch norm of the unpadded values (torch's, on
them gathered); padded positions are normalized with those statistics, as Keras does;
against the float64 reference; first and second derivatives; bad masks."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import normlab
from normlab import functional as NF
from normlab import reference as R
from conftest import assert_rel

LENGTHS = [5, 2, 4, 1]  # a batch of 4 sequences padded to length 5


def padded_batch(seed=0, pad_value=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(len(LENGTHS), 3, 5, generator=gen) + 2
    mask = torch.arange(5) < torch.tensor(LENGTHS)[:, None]  # (N, L)
    return x.masked_fill(~mask[:, None, :], pad_value), mask


def gathered(t, mask):
    """The real positions of an (N, C, L) tensor as a (1, C, M) batch."""
    return t.permute(1, 0, 2)[:, mask].unsqueeze(0)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_is_torch_batch_norm_of_the_unpadded_values(momentum):
    ours, theirs = normlab.BatchNorm1d(3, momentum=momentum), torch.nn.BatchNorm1d(3, momentum=momentum)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5), theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x, mask = padded_batch(step)
        dy = torch.randn(x.shape) * mask[:, None, :]  # a masked loss: no gradient from padding
        xo, xt = x.clone().requires_grad_(), gathered(x, mask).requires_grad_()
        yo, yt = ours(xo, mask), theirs(xt)
        yo.backward(dy), yt.backward(gathered(dy, mask))
        assert_rel(gathered(yo, mask), yt, 1e-5, "output at real positions")
        assert_rel(gathered(xo.grad, mask), xt.grad, 1e-5, "input gradient at real positions")
        assert_rel(xo.grad * ~mask[:, None, :], torch.zeros_like(x), 1e-12, "padding gets no gradient")
    for name in ("weight", "bias"):
        assert_rel(getattr(ours, name).grad, getattr(theirs, name).grad, 1e-5, name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_rel(getattr(ours, name), getattr(theirs, name), 1e-6, name)


def test_padded_positions_are_normalized_with_those_statistics_whatever_they_hold():
    bn = normlab.BatchNorm1d(3, affine=False, track_running_stats=False)
    x, mask = padded_batch(pad_value=float("inf"))
    x[3, :, 4] = float("nan")
    y = bn(x, mask)
    real = gathered(x, mask)
    mean, var = real.mean((0, 2)), real.var((0, 2), unbiased=False)
    assert_rel(gathered(y, mask), (real - mean[:, None]) / (var[:, None] + bn.eps).sqrt(), 1e-5)
    assert torch.isinf(y[1, :, 2:]).all() and torch.isnan(y[3, :, 4]).all()  # the padding, normalized


def test_a_full_mask_is_no_mask():
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with normlab.use_backend("normlab"):
        assert_rel(NF.batch_norm(x, None, None, training=True, mask=torch.ones(3, 4, dtype=torch.bool)),
                   NF.batch_norm(x, None, None, training=True), 1e-14)


def test_other_layouts_and_variants_take_a_mask():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 4, 4, generator=gen)
    mask = torch.rand(3, 4, 4, generator=gen) < 0.5
    bn = normlab.BatchNorm2d(2, affine=False, track_running_stats=False)
    assert_rel(gathered(bn(x, mask).flatten(2), mask.flatten(1)), normlab.BatchNorm1d(2, affine=False)(gathered(x.flatten(2), mask.flatten(1))), 1e-5)
    ghost = normlab.GhostBatchNorm(2, virtual_batch_size=2, affine=False, track_running_stats=False)
    y = ghost(x, mask)
    assert_rel(y[2:], bn(x[2:], mask[2:]), 1e-6)  # the second virtual batch, masked on its own
    renorm = normlab.BatchRenorm2d(2)
    assert_rel(renorm(x, mask), normlab.BatchNorm2d(2)(x, mask), 1e-6)  # warm-up: batch norm


def test_eval_ignores_the_mask():
    bn = normlab.BatchNorm1d(3)
    x, mask = padded_batch()
    bn(x, mask)
    bn.eval()
    assert torch.equal(bn(x, mask), bn(x))


@given(
    n=st.integers(1, 4),
    length=st.integers(1, 5),
    affine=st.booleans(),
    keep=st.floats(0.2, 1.0),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(n, length, affine, keep, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.normal(1, 3, size=(n, 2, length)), rng.normal(size=(n, 2, length))
    assume(n * length >= 2)  # a single value is the policy's business
    mask = rng.random((n, length)) < keep
    mask.flat[:2] = True
    w, b = (rng.normal(size=2), rng.normal(size=2)) if affine else (None, None)
    y_ref, cache = R.batch_norm_train(x, w, b, 1e-5, mask=mask)
    dx_ref, dw_ref, db_ref = R.batch_norm_backward(dy, cache)  # dy at padded positions too
    m_ref, v_ref, _ = R.update_running_stats(np.zeros(2), np.ones(2), cache.mean, cache.var, cache.count, 0.4, 0)

    xt = torch.tensor(x, requires_grad=True)
    wt, bt = (None, None) if not affine else (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True))
    rm, rv = torch.zeros(2, dtype=torch.double), torch.ones(2, dtype=torch.double)
    y = NF.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.4, mask=torch.tensor(mask))
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(xt.grad, dx_ref, 1e-8, "dx")
    if affine:
        assert_rel(wt.grad, dw_ref, 1e-10, "dgamma")
        assert_rel(bt.grad, db_ref, 1e-10, "dbeta")
    assert_rel(rm, m_ref, 1e-12, "running_mean")
    assert_rel(rv, v_ref, 1e-12, "running_var")


def test_gradcheck_and_gradgradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.double, generator=gen, requires_grad=True)
    w = torch.randn(2, dtype=torch.double, generator=gen, requires_grad=True)
    b = torch.randn(2, dtype=torch.double, generator=gen, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.bool)

    def f(x, w, b):
        return NF.batch_norm(x, None, None, w, b, training=True, eps=1e-3, mask=mask)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_bad_masks_name_the_layer():
    bn = normlab.BatchNorm1d(3)
    x, mask = padded_batch()
    with pytest.raises(TypeError, match=r"BatchNorm1d\(3\): expected a bool mask .* got torch.float32; e.g. mask.bool\(\)"):
        bn(x, mask.float())
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): expected a mask of shape \(4, 5\) .* got \(4, 1, 5\)"):
        bn(x, mask[:, None])
    with pytest.raises(TypeError, match=r"BatchNorm1d\(3\): expected a bool mask .* got list"):
        bn(x, [[True] * 5] * 4)
    one = torch.zeros(4, 5, dtype=torch.bool)
    one[0, 0] = True
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): training needs more than one value per channel.* and 1 unmasked value"):
        bn(x, one)
    with pytest.raises(ValueError, match=r"and 0 unmasked value"):
        bn(x, torch.zeros(4, 5, dtype=torch.bool))
    assert bn.num_batches_tracked.item() == 0
