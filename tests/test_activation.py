"""Activations fused with batch norm and in-place activated batch norm, in torch ops (any device):
against the float64 reference, gradcheck, and what in-place ABN keeps for backward."""

import numpy as np
import pytest
import torch

import normlab.functional as NF
from conftest import assert_rel
from normlab import reference as R
from normlab.activation import ACTIVATIONS, INVERTIBLE, InPlaceABN, activate

PARAM = {"leaky_relu": 0.1, "elu": 0.7}
Z = np.concatenate([np.linspace(-4, -0.01, 20), np.linspace(0.01, 4, 20)])  # away from the kinks


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_reference_activation_derivative_and_inverse(name):
    p = PARAM.get(name, 0.0)
    h = 1e-6
    numeric = (R.activation(Z + h, name, p) - R.activation(Z - h, name, p)) / (2 * h)
    assert_rel(R.activation_grad(Z, name, p), numeric, 1e-7, "act'")
    assert_rel(activate(torch.tensor(Z), name, p), R.activation(Z, name, p), 1e-15, "torch act")
    if name in INVERTIBLE:
        assert_rel(R.activation_inverse(R.activation(Z, name, p), name, p), Z, 1e-12, "inverse")
    else:
        with pytest.raises(ValueError, match="not invertible"):
            R.activation_inverse(Z, name, p)


@pytest.mark.parametrize("name", INVERTIBLE)
def test_inplace_abn_gradcheck(name):
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((4, 3, 5), (3,), (3,)))
    f = lambda x, w, b: InPlaceABN.apply(x, (w.abs() + 1e-3).view(1, 3, 1), b.view(1, 3, 1), 1e-5, name,  # noqa: E731
                                         PARAM.get(name, 0.0))[0]
    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", INVERTIBLE)
def test_inplace_abn_matches_the_reference(name, dtype):
    """Gradients recomputed from the output equal those of the plain BN + activation."""
    rng = np.random.default_rng(0)
    x, dy = rng.normal(2, 3, size=(6, 4, 3, 3)), rng.normal(size=(6, 4, 3, 3))
    w, b = rng.normal(size=4), rng.normal(size=4)
    p = PARAM.get(name, 0.0)
    gamma = np.abs(w) + 1e-5
    y, cache, z = R.batch_norm_act_train(x, gamma, b, 1e-5, name, p)
    dx, dw, db, _ = R.batch_norm_act_backward(dy, cache, z, name, p)
    xt, wt, bt = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x, w, b))
    rm, rv = torch.zeros(4, dtype=dtype), torch.ones(4, dtype=dtype)
    yt = NF.batch_norm_act(xt, rm, rv, wt, bt, True, 0.1, 1e-5, name, negative_slope=p, alpha=p, inplace_abn=True)
    yt.backward(torch.tensor(dy, dtype=dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_rel(yt, y, tol, "y")
    assert_rel(xt.grad, dx, 10 * tol, "dx")
    assert_rel(wt.grad, dw * np.sign(w), 10 * tol, "dweight (through |w| + eps)")
    assert_rel(bt.grad, db, 10 * tol, "dbias")
    assert_rel(rv, 0.9 + 0.1 * cache.var.ravel() * 54 / 53, tol, "running_var")


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_batch_norm_act_matches_the_reference(backend, name, with_residual):
    rng = np.random.default_rng(1)
    x, dy, r = rng.normal(1, 2, size=(5, 3, 4)), rng.normal(size=(5, 3, 4)), rng.normal(size=(5, 3, 4))
    w, b = rng.normal(size=3), rng.normal(size=3)
    p = PARAM.get(name, 0.0)
    residual = r if with_residual else None
    y, cache, z = R.batch_norm_act_train(x, w, b, 1e-5, name, p, residual)
    dx, dw, db, dres = R.batch_norm_act_backward(dy, cache, z, name, p)
    xt, wt, bt, rt = (torch.tensor(a, requires_grad=True) for a in (x, w, b, r))
    yt = NF.batch_norm_act(xt, None, None, wt, bt, True, 0.1, 1e-5, name, negative_slope=p, alpha=p,
                           residual=rt if with_residual else None)
    yt.backward(torch.tensor(dy))
    assert_rel(yt, y, 1e-10, "y")
    assert_rel(xt.grad, dx, 1e-9, "dx")
    assert_rel(wt.grad, dw, 1e-9, "dweight")
    assert_rel(bt.grad, db, 1e-9, "dbias")
    if with_residual:
        assert_rel(rt.grad, dres, 1e-9, "dresidual")


def _saved_bytes(fn, *args):
    """Bytes of the tensors autograd keeps for backward while ``fn(*args)`` is alive, counting each storage once."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, sum(storages.values())


def test_inplace_abn_keeps_only_its_output():
    """BN + leaky ReLU keeps its input x and the activation's input; in-place ABN only y (+ per-channel vectors)."""
    x = torch.randn(8, 16, 12, 12, requires_grad=True)
    w, b = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    act = lambda abn: lambda x: NF.batch_norm_act(x, None, None, w, b, True, activation="leaky_relu",  # noqa: E731
                                                  inplace_abn=abn)
    y, plain = _saved_bytes(act(False), x)
    y_abn, abn = _saved_bytes(act(True), x)
    assert_rel(y_abn, y, 3e-5, "same output (in-place ABN's gamma is |w| + eps)")
    size = x.numel() * x.element_size()
    assert plain >= 2 * size
    assert size <= abn < 1.05 * size


def test_inplace_abn_refuses_what_it_cannot_invert():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="invertible activation.*'relu'"):
        NF.batch_norm_act(x, None, None, training=True, activation="relu", inplace_abn=True)
    with pytest.raises(ValueError, match="invertible activation.*parameter 0.0"):
        NF.batch_norm_act(x, None, None, training=True, activation="leaky_relu", negative_slope=0.0, inplace_abn=True)
    with pytest.raises(ValueError, match="takes no residual"):
        NF.batch_norm_act(x, None, None, training=True, activation="elu", residual=x, inplace_abn=True)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        NF.batch_norm_act(x, None, None, training=True, activation="gelu")
    with pytest.raises(ValueError, match=r"expected a residual of the input's shape \(4, 3\), got \(4, 1\)"):
        NF.batch_norm_act(x, None, None, training=True, residual=x[:, :1])
    y = InPlaceABN.apply(x.requires_grad_(), None, None, 1e-5, "identity", 0.0)[0]
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        (g,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
        g.sum().backward()
