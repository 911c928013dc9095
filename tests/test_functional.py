"""normlab's own batch norm (normlab.autograd.Normalize via functional.batch_norm) against the
float64 reference: gradcheck, gradgradcheck, property tests, stability, precision, layout."""

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import normlab
from normlab import functional as NF
from normlab import reference as R
from conftest import assert_rel


@pytest.fixture(autouse=True)
def own_implementation():
    with normlab.use_backend("normlab"):
        yield


def train_fn(affine):
    def f(x, w=None, b=None):
        return NF.batch_norm(x, None, None, w if affine else None, b if affine else None, training=True, eps=1e-3)

    return f


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 2, 3), (2, 2, 2, 2, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck(shape, affine):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.double, generator=gen, requires_grad=True)
    w = torch.randn(shape[1], dtype=torch.double, generator=gen, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.double, generator=gen, requires_grad=True)
    inputs = (x, w, b) if affine else (x,)
    f = train_fn(affine)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_eval_mode_gradcheck():
    x = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(2, dtype=torch.double, requires_grad=True)
    b = torch.randn(2, dtype=torch.double, requires_grad=True)
    rm, rv = torch.randn(2, dtype=torch.double), torch.rand(2, dtype=torch.double) + 0.5
    f = lambda x, w, b: NF.batch_norm(x, rm, rv, w, b, training=False)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


shapes = st.tuples(
    st.integers(2, 5), st.integers(1, 4), st.lists(st.integers(1, 4), min_size=0, max_size=3)
).map(lambda t: (t[0], t[1], *t[2]))


@given(
    shape=shapes,
    affine=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    loc=st.floats(-50, 50),
    scale=st.floats(0.01, 20),
    seed=st.integers(0, 2**16),
)
# a batch mean near zero: its rounding is that of the data (found by hypothesis in CI)
@example(shape=(2, 1, 3, 3), affine=False, eps=1e-5, loc=0.0, scale=0.01, seed=264)
def test_matches_reference_forward_and_backward(shape, affine, eps, loc, scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, scale, size=shape)
    dy = rng.normal(size=shape)
    gamma, beta = (rng.normal(size=shape[1]), rng.normal(size=shape[1])) if affine else (None, None)
    y_ref, cache = R.batch_norm_train(x, gamma, beta, eps)
    dx_ref, dg_ref, db_ref = R.batch_norm_backward(dy, cache)

    xt = torch.tensor(x, requires_grad=True)
    wt = None if gamma is None else torch.tensor(gamma, requires_grad=True)
    bt = None if beta is None else torch.tensor(beta, requires_grad=True)
    rm, rv = torch.zeros(shape[1], dtype=torch.double), torch.ones(shape[1], dtype=torch.double)
    y = NF.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.3, eps=eps)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(xt.grad, dx_ref, 1e-8, "dx")
    if affine:
        assert_rel(wt.grad, dg_ref, 1e-10, "dgamma")
        assert_rel(bt.grad, db_ref, 1e-10, "dbeta")
    m_ref, v_ref, _ = R.update_running_stats(np.zeros(shape[1]), np.ones(shape[1]), cache.mean, cache.var, cache.count, 0.3, 0)
    # momentum x the data's magnitude: the batch mean's rounding is relative to |x|, not to the mean
    assert_rel(rm, m_ref, 1e-12, "running_mean", scale=max(np.abs(m_ref).max(), 0.3 * np.abs(x).max()))
    assert_rel(rv, v_ref, 1e-12, "running_var")


def test_stable_statistics_at_a_large_offset():
    """fp32 input of 1e4 + N(0, 1): the output matches float64 to 1e-4 relative."""
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(32, 8, 16, 16, generator=gen)
    dy = torch.randn(x.shape, generator=gen)
    xt = x.clone().requires_grad_()
    y = NF.batch_norm(xt, None, None, training=True)
    y.backward(dy)
    y_ref, cache = R.batch_norm_train(x.double().numpy())
    dx_ref, _, _ = R.batch_norm_backward(dy.double().numpy(), cache)
    assert_rel(y, y_ref, 1e-4, "y")
    assert_rel(xt.grad, dx_ref, 1e-4, "dx")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype):
    """131072 values of ~10 per channel: their sum overflows float16 and is coarse in bfloat16,
    so only float32 accumulation matches the reference."""
    gen = torch.Generator().manual_seed(0)
    x = (10 + torch.randn(512, 2, 256, generator=gen)).to(dtype)
    w = torch.rand(2, generator=gen).to(dtype)
    rm, rv = torch.zeros(2), torch.ones(2)
    y = NF.batch_norm(x, rm, rv, w, None, training=True, momentum=1.0)
    assert y.dtype == dtype
    y_ref, cache = R.batch_norm_train(x.double().numpy(), w.double().numpy())
    resolution = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    assert_rel(y, y_ref, 4 * resolution, "y")
    assert_rel(rm, cache.mean.ravel(), 1e-6, "running_mean")
    assert_rel(rv, cache.var.ravel() * cache.count / (cache.count - 1), 1e-5, "running_var")


def test_channels_last_stays_channels_last():
    x = torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last).requires_grad_()
    y = NF.batch_norm(x, torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3), training=True)
    y.backward(torch.randn_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(2, 3, 2, 4, 5).to(memory_format=torch.channels_last_3d)
    assert NF.batch_norm(x3, None, None, training=True).is_contiguous(memory_format=torch.channels_last_3d)


def test_empty_batch_leaves_running_statistics_alone(backend):
    rm, rv = torch.zeros(3), torch.ones(3)
    w = torch.ones(3, requires_grad=True)
    y = NF.batch_norm(torch.randn(0, 3, 4), rm, rv, w, None, training=True)
    y.sum().backward()
    assert y.shape == (0, 3, 4)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    assert torch.equal(w.grad, torch.zeros(3))
