"""The float64 reference: its hand-derived backward against finite differences, its
running-statistics rule against its definition, and its independence from torch."""

import subprocess
import sys

import numpy as np
import pytest

from normlab import reference as R


def numerical_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        up = f(x)
        x[i] = old - eps
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("shape,axis", [((5, 3), 1), ((4, 3, 5), 1), ((2, 3, 2, 3), 1), ((2, 3, 4), -1)])
def test_batch_norm_backward_matches_finite_differences(shape, axis):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    c = shape[axis]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    dy = rng.normal(size=shape)

    def loss(x_, g_=gamma, b_=beta):
        return float((R.batch_norm_train(x_, g_, b_, 1e-3, axis)[0] * dy).sum())

    _, cache = R.batch_norm_train(x, gamma, beta, 1e-3, axis)
    dx, dgamma, dbeta = R.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(dx, numerical_grad(loss, x.copy()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numerical_grad(lambda g: loss(x, g), gamma.copy()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, numerical_grad(lambda b: loss(x, gamma, b), beta.copy()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("center", [True, False])
def test_normalize_backward_over_other_axes(center):
    """The same backward serves any reduction axes, with or without centering."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 5))
    w = rng.normal(size=(1, 1, 5))
    dy = rng.normal(size=x.shape)

    def loss(x_):
        return float((R.normalize(x_, (1, 2), w, None, 1e-3, center)[0] * dy).sum())

    _, cache = R.normalize(x, (1, 2), w, None, 1e-3, center)
    dx, dw, db = R.normalize_backward(dy, cache)
    assert db is None and dw.shape == w.shape
    np.testing.assert_allclose(dx, numerical_grad(loss, x.copy()), rtol=1e-5, atol=1e-7)


def test_forward_statistics_are_per_channel_and_biased():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(8, 4, 6))
    y, cache = R.batch_norm_train(x, eps=0.0)
    np.testing.assert_allclose(cache.mean.ravel(), x.mean(axis=(0, 2)))
    np.testing.assert_allclose(cache.var.ravel(), x.var(axis=(0, 2)))
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1, rtol=1e-12)
    assert cache.count == 48


def test_channel_axis_names_the_layout():
    """Channels-last data with channel_axis=-1 equals channels-first data with axis 1."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 5))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    y_first, _ = R.batch_norm_train(x, gamma, beta)
    y_last, _ = R.batch_norm_train(np.moveaxis(x, 1, -1), gamma, beta, channel_axis=-1)
    np.testing.assert_allclose(np.moveaxis(y_last, -1, 1), y_first, rtol=1e-12)
    ev = R.batch_norm_eval(np.moveaxis(x, 1, -1), gamma, gamma**2, channel_axis=-1)
    np.testing.assert_allclose(np.moveaxis(ev, -1, 1), R.batch_norm_eval(x, gamma, gamma**2), rtol=1e-12)


def test_eval_is_the_per_channel_affine_map():
    x = np.arange(6.0).reshape(2, 3)
    y = R.batch_norm_eval(x, [1.0, 2.0, 3.0], [4.0, 1.0, 0.25], [2.0, 1.0, 1.0], [0.0, 0.0, 1.0], eps=0.0)
    np.testing.assert_allclose(y, [[-1.0, -1.0, -1.0], [2.0, 2.0, 5.0]])


def test_running_stats_exponential_and_cumulative():
    rng = np.random.default_rng(4)
    batches = [rng.normal(i, 1 + i, size=(10, 3)) for i in range(5)]
    mean, var, n = np.zeros(3), np.ones(3), 0
    cum_mean, cum_var, k = np.zeros(3), np.ones(3), 0
    for b in batches:
        _, c = R.batch_norm_train(b)
        mean, var, n = R.update_running_stats(mean, var, c.mean, c.var, c.count, 0.1, n)
        cum_mean, cum_var, k = R.update_running_stats(cum_mean, cum_var, c.mean, c.var, c.count, None, k)
    # exponential: unrolled by hand
    exp_mean, exp_var = np.zeros(3), np.ones(3)
    for b in batches:
        exp_mean = 0.9 * exp_mean + 0.1 * b.mean(0)
        exp_var = 0.9 * exp_var + 0.1 * b.var(0, ddof=1)
    np.testing.assert_allclose(mean, exp_mean)
    np.testing.assert_allclose(var, exp_var)
    # momentum=None: the plain average of the batch means and unbiased variances (Alg. 2)
    np.testing.assert_allclose(cum_mean, np.mean([b.mean(0) for b in batches], axis=0))
    np.testing.assert_allclose(cum_var, np.mean([b.var(0, ddof=1) for b in batches], axis=0))
    assert n == k == 5


def test_reference_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import normlab.reference as r; print(r.normalize([[1.0, 3.0]], 1)[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "-0.99" in out.stdout


def test_masked_backward_matches_finite_differences():
    """Masked statistics: dy at padded positions too, and padded values that move nothing but their own output."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2, 4))
    mask = rng.random((3, 4)) < 0.6
    mask[0, :2] = True
    gamma, beta, dy = rng.normal(size=2), rng.normal(size=2), rng.normal(size=x.shape)

    def loss(x_):
        return float((R.batch_norm_train(x_, gamma, beta, 1e-3, mask=mask)[0] * dy).sum())

    _, cache = R.batch_norm_train(x, gamma, beta, 1e-3, mask=mask)
    assert cache.count == mask.sum()
    dx, _, _ = R.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(dx, numerical_grad(loss, x.copy()), rtol=1e-5, atol=1e-7)


def test_batch_renorm_backward_matches_finite_differences_where_r_and_d_are_clipped():
    """Clipped, r and d are constant, so the stop-gradient backward is the true derivative."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3))
    rm, rv = np.full(3, 40.0), np.full(3, 90.0)
    gamma, beta, dy = rng.normal(size=3), rng.normal(size=3), rng.normal(size=x.shape)

    def loss(x_, g_=gamma):
        return float((R.batch_renorm_train(x_, rm, rv, g_, beta, 1e-3, 1.5, 0.2)[0] * dy).sum())

    _, rc = R.batch_renorm_train(x, rm, rv, gamma, beta, 1e-3, 1.5, 0.2)
    assert np.allclose(rc.r, 1 / 1.5) and np.allclose(rc.d, -0.2)
    dx, dgamma, _ = R.batch_renorm_backward(dy, rc)
    np.testing.assert_allclose(dx, numerical_grad(loss, x.copy()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numerical_grad(lambda g: loss(x, g), gamma.copy()), rtol=1e-5, atol=1e-7)
