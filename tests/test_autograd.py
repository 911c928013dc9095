"""normlab.autograd.Normalize on its own: any reduction axes, weights that vary or not along
them, with and without centering, against the reference; first and second derivatives."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from normlab import reference as R
from normlab.autograd import Normalize, Statistics
from conftest import assert_rel

# (input shape, reduced dims, weight shape): batch-, instance-, layer- and group-norm-like
LAYOUTS = [
    ((4, 3, 5), (0, 2), (1, 3, 1)),
    ((4, 3, 5), (2,), (1, 3, 1)),
    ((4, 3, 5), (2,), (5,)),
    ((2, 3, 4, 5), (1, 2, 3), (3, 4, 5)),
    ((2, 2, 3, 4), (2, 3), (1, 2, 3, 1)),
]


@pytest.mark.parametrize("shape,dims,wshape", LAYOUTS)
@pytest.mark.parametrize("center", [True, False])
def test_gradcheck_and_gradgradcheck(shape, dims, wshape, center):
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(s, dtype=torch.double, generator=gen, requires_grad=True) for s in (shape, wshape, wshape)]
    f = lambda x, w, b: Normalize.apply(x, w, b, dims, 1e-3, center)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@given(
    layout=st.sampled_from(LAYOUTS),
    center=st.booleans(),
    with_weight=st.booleans(),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(layout, center, with_weight, with_bias, seed):
    shape, dims, wshape = layout
    rng = np.random.default_rng(seed)
    x, dy = rng.normal(2, 3, size=shape), rng.normal(size=shape)
    w = rng.normal(size=wshape) if with_weight else None
    b = rng.normal(size=wshape) if with_bias else None
    y_ref, cache = R.normalize(x, dims, w, b, 1e-5, center)
    dx_ref, dw_ref, db_ref = R.normalize_backward(dy, cache)

    xt = torch.tensor(x, requires_grad=True)
    wt = None if w is None else torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    y, mean, var = Normalize.apply(xt, wt, bt, dims, 1e-5, center)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(var, cache.var, 1e-10, "var")
    assert_rel(mean, np.broadcast_to(cache.mean, mean.shape), 1e-10, "mean")
    assert_rel(xt.grad, dx_ref, 1e-8, "dx")
    if w is not None:
        assert_rel(wt.grad, dw_ref, 1e-9, "dweight")
    if b is not None:
        assert_rel(bt.grad, db_ref, 1e-10, "dbias")


def test_statistics_carry_no_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y, mean, var = Normalize.apply(x, None, None, (0,), 1e-5, True)
    assert y.requires_grad and not mean.requires_grad and not var.requires_grad


def random_mask(rng, shape, dims):
    """A mask that varies along ``dims`` only, keeping at least two positions."""
    mask = rng.random([n if d in dims else 1 for d, n in enumerate(shape)]) < 0.6
    mask.flat[:2] = True
    return mask


@given(layout=st.sampled_from(LAYOUTS), center=st.booleans(), seed=st.integers(0, 2**16))
def test_masked_statistics_match_reference(layout, center, seed):
    """The pluggable statistics step: a mask over any reduced axes, with and without centering."""
    shape, dims, wshape = layout
    rng = np.random.default_rng(seed)
    x, dy, w, b = rng.normal(2, 3, size=shape), rng.normal(size=shape), rng.normal(size=wshape), rng.normal(size=wshape)
    mask = random_mask(rng, shape, dims)
    y_ref, cache = R.normalize(x, dims, w, b, 1e-5, center, mask=mask)
    dx_ref, dw_ref, db_ref = R.normalize_backward(dy, cache)
    xt, wt, bt = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    statistics = Statistics(xt, dims, torch.tensor(mask))
    assert statistics.count == cache.count
    y, mean, var = Normalize.apply(xt, wt, bt, dims, 1e-5, center, statistics)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(var, cache.var, 1e-10, "var")
    assert_rel(xt.grad, dx_ref, 1e-8, "dx")
    assert_rel(wt.grad, dw_ref, 1e-9, "dweight")
    assert_rel(bt.grad, db_ref, 1e-10, "dbias")


@pytest.mark.parametrize("center", [True, False])
def test_masked_gradcheck_and_gradgradcheck(center):
    shape, dims, wshape = LAYOUTS[3]
    mask = torch.tensor(random_mask(np.random.default_rng(0), shape, dims))
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(s, dtype=torch.double, generator=gen, requires_grad=True) for s in (shape, wshape, wshape)]
    f = lambda x, w, b: Normalize.apply(x, w, b, dims, 1e-3, center, Statistics(x, dims, mask))[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_precomputed_moments_give_the_same_result():
    x = torch.randn(4, 3, 5, dtype=torch.double) * 3 + 100
    statistics = Statistics(x, (0, 2))
    _, moments = statistics.centered(x)
    y1 = Normalize.apply(x, None, None, (0, 2), 1e-5, True)[0]
    y2 = Normalize.apply(x, None, None, (0, 2), 1e-5, True, statistics, moments)[0]
    assert torch.equal(y1, y2)
    with pytest.raises(ValueError, match=r"statistics over dims \(0, 2\) given for dims \(2,\)"):
        Normalize.apply(x, None, None, (2,), 1e-5, True, statistics)
