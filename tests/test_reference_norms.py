"""The float64 reference of layer, RMS, group and instance norm, mean-only batch norm and weight
norm: forward against direct NumPy definitions, hand-derived backward against finite differences."""

import numpy as np
import pytest

from normlab import reference as R
from test_reference import numerical_grad


def test_forwards_against_their_definitions():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(2, 6, 3, 4))
    w, b = rng.normal(size=6), rng.normal(size=6)

    def standardize(a, axes, eps=1e-5):
        return (a - a.mean(axes, keepdims=True)) / np.sqrt(a.var(axes, keepdims=True) + eps)

    np.testing.assert_allclose(R.layer_norm(x, (3, 4))[0], standardize(x, (2, 3)), rtol=1e-12)
    np.testing.assert_allclose(
        R.rms_norm(x, 4, eps=1e-6)[0], x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6), rtol=1e-12
    )
    inst = standardize(x, (2, 3)) * w.reshape(1, 6, 1, 1) + b.reshape(1, 6, 1, 1)
    np.testing.assert_allclose(R.instance_norm(x, w, b)[0], inst, rtol=1e-12)
    # group norm: each group of 2 consecutive channels, by hand
    y = R.group_norm(x, 3, w, b)[0]
    for n in range(2):
        for g in range(3):
            block = x[n, 2 * g : 2 * g + 2]
            expected = (block - block.mean()) / np.sqrt(block.var() + 1e-5)
            expected = expected * w[2 * g : 2 * g + 2, None, None] + b[2 * g : 2 * g + 2, None, None]
            np.testing.assert_allclose(y[n, 2 * g : 2 * g + 2], expected, rtol=1e-12)
    # mean-only batch norm and weight norm
    mo, mean = R.mean_only_batch_norm_train(x, b)
    np.testing.assert_allclose(mo, x - x.mean((0, 2, 3), keepdims=True) + b.reshape(1, 6, 1, 1), rtol=1e-12)
    np.testing.assert_allclose(R.mean_only_batch_norm_eval(x, mean.ravel(), b), mo, rtol=1e-12)
    v = rng.normal(size=(4, 3, 2))
    g = rng.uniform(1, 2, size=(4, 1, 1))
    wn = R.weight_norm(v, g, 0)
    np.testing.assert_allclose(np.sqrt((wn**2).sum((1, 2))), g.ravel(), rtol=1e-12)
    np.testing.assert_allclose(R.weight_norm(v, 2.0, None), 2 * v / np.linalg.norm(v), rtol=1e-12)


def test_group_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    w, b = rng.normal(size=4), rng.normal(size=4)

    def loss(x_=x, w_=w, b_=b):
        return float((R.group_norm(x_, 2, w_, b_, 1e-3)[0] * dy).sum())

    dx, dw, db = R.group_norm_backward(dy, R.group_norm(x, 2, w, b, 1e-3)[1])
    np.testing.assert_allclose(dx, numerical_grad(lambda a: loss(x_=a), x.copy()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(lambda a: loss(w_=a), w.copy()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(lambda a: loss(b_=a), b.copy()), rtol=1e-5, atol=1e-7)


def test_mean_only_batch_norm_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    x, dy, b = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4)), rng.normal(size=2)
    dx, db = R.mean_only_batch_norm_backward(dy)
    np.testing.assert_allclose(
        dx, numerical_grad(lambda a: float((R.mean_only_batch_norm_train(a, b)[0] * dy).sum()), x.copy()), atol=1e-8
    )
    np.testing.assert_allclose(
        db, numerical_grad(lambda a: float((R.mean_only_batch_norm_train(x, a)[0] * dy).sum()), b.copy()), atol=1e-8
    )


@pytest.mark.parametrize("shape,dim", [((4, 3), 0), ((3, 2, 2), 1), ((2, 3), None), ((2, 3, 2), -1)])
def test_weight_norm_backward_matches_finite_differences(shape, dim):
    rng = np.random.default_rng(3)
    v, dw = rng.normal(size=shape), rng.normal(size=shape)
    g_shape = () if dim in (None, -1) else tuple(n if i == dim else 1 for i, n in enumerate(shape))
    g = rng.uniform(0.5, 2, size=g_shape)
    dv, dg = R.weight_norm_backward(dw, v, g, dim)
    np.testing.assert_allclose(
        dv, numerical_grad(lambda a: float((R.weight_norm(a, g, dim) * dw).sum()), v.copy()), rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        dg, numerical_grad(lambda a: float((R.weight_norm(v, a, dim) * dw).sum()), np.array(g)), rtol=1e-5, atol=1e-8
    )
