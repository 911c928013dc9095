"""normlab's own layer_norm, group_norm, instance_norm, rms_norm, mean_only_batch_norm and
weight_norm (normlab.functional, forced onto the normlab backend) against the float64
reference: gradcheck, gradgradcheck and property tests of forward, backward and running
statistics."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import normlab
from normlab import functional as NF
from normlab import reference as R
from conftest import assert_rel


@pytest.fixture(autouse=True)
def own_implementation():
    with normlab.use_backend("normlab"):
        yield


def double(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, dtype=torch.double, generator=gen, requires_grad=True) for s in shapes]


# (name, function of (x, weight, bias), input shape, parameter shape)
FUNCTIONS = [
    ("layer_norm", lambda x, w, b: NF.layer_norm(x, (3, 4), w, b, eps=1e-3), (2, 3, 4), (3, 4)),
    ("rms_norm", lambda x, w, b: NF.rms_norm(x, (4,), w, eps=1e-3) + b, (3, 2, 4), (4,)),
    ("group_norm", lambda x, w, b: NF.group_norm(x, 2, w, b, eps=1e-3), (2, 4, 3), (4,)),
    ("group_norm-2d", lambda x, w, b: NF.group_norm(x, 3, w, b, eps=1e-3), (2, 6, 2, 2), (6,)),
    ("instance_norm", lambda x, w, b: NF.instance_norm(x, None, None, w, b, eps=1e-3), (2, 3, 2, 3), (3,)),
    ("instance_norm-eval", lambda x, w, b: NF.instance_norm(
        x, torch.arange(3.0, dtype=torch.double), torch.arange(1.0, 4.0, dtype=torch.double), w, b, False), (2, 3, 4), (3,)),
    ("mean_only_batch_norm", lambda x, w, b: w * NF.mean_only_batch_norm(x, None, b, training=True), (4, 3, 2), (3, 1)),
    ("weight_norm", lambda v, g, _: NF.weight_norm(v, g.view(3, 1, 1), 0), (3, 2, 2), (3,)),
    ("weight_norm-dim1", lambda v, g, _: NF.weight_norm(v, g.view(1, 3), 1), (2, 3), (3,)),
    ("weight_norm-whole", lambda v, g, _: NF.weight_norm(v, g.sum(), None), (3, 2), (3,)),
]


@pytest.mark.parametrize("f,shape,pshape", [f[1:] for f in FUNCTIONS], ids=[f[0] for f in FUNCTIONS])
def test_gradcheck_and_gradgradcheck(f, shape, pshape):
    inputs = double(shape, pshape, pshape)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def tensors(*arrays):
    return [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]


def check_grads(pairs):
    for name, t, ref in pairs:
        if ref is not None:
            assert_rel(t.grad, ref, 1e-8, name)


data = dict(loc=st.floats(-50, 50), scale=st.floats(0.01, 20), seed=st.integers(0, 2**16))


@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    normalized=st.lists(st.integers(2, 4), min_size=1, max_size=2),
    affine=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-2]),
    **data,
)
def test_layer_norm_and_rms_norm_match_reference(lead, normalized, affine, eps, loc, scale, seed):
    rng = np.random.default_rng(seed)
    shape = (*lead, *normalized)
    x, dy = rng.normal(loc, scale, size=shape), rng.normal(size=shape)
    w, b = (rng.normal(size=normalized), rng.normal(size=normalized)) if affine else (None, None)
    # layer norm
    y_ref, cache = R.layer_norm(x, normalized, w, b, eps)
    dx_ref, dw_ref, db_ref = R.normalize_backward(dy, cache)
    xt, wt, bt = tensors(x, w, b)
    y = NF.layer_norm(xt, normalized, wt, bt, eps)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "layer_norm y")
    check_grads([("dx", xt, dx_ref), ("dw", wt, dw_ref), ("db", bt, db_ref)])
    # RMS norm
    y_ref, cache = R.rms_norm(x, normalized, w, eps)
    dx_ref, dw_ref, _ = R.normalize_backward(dy, cache)
    xt, wt = tensors(x, w)
    y = NF.rms_norm(xt, normalized, wt, eps)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "rms_norm y")
    check_grads([("dx", xt, dx_ref), ("dw", wt, dw_ref)])


@given(
    n=st.integers(1, 3),
    groups=st.integers(1, 3),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    affine=st.booleans(),
    **data,
)
def test_group_norm_matches_reference(n, groups, per_group, spatial, affine, loc, scale, seed):
    shape = (n, groups * per_group, *spatial)
    if per_group * int(np.prod(spatial)) == 1:
        return  # a group of one value is refused (test_norms_bad_input)
    rng = np.random.default_rng(seed)
    x, dy = rng.normal(loc, scale, size=shape), rng.normal(size=shape)
    c = shape[1]
    w, b = (rng.normal(size=c), rng.normal(size=c)) if affine else (None, None)
    y_ref, cache = R.group_norm(x, groups, w, b)
    dx_ref, dw_ref, db_ref = R.group_norm_backward(dy, cache)
    xt, wt, bt = tensors(x, w, b)
    y = NF.group_norm(xt, groups, wt, bt)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    check_grads([("dx", xt, dx_ref), ("dw", wt, dw_ref), ("db", bt, db_ref)])


@given(
    n=st.integers(1, 4),
    c=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 4), min_size=1, max_size=3).filter(lambda s: np.prod(s) > 1),
    affine=st.booleans(),
    momentum=st.sampled_from([0.1, 0.5, 1.0]),
    **data,
)
def test_instance_norm_matches_reference(n, c, spatial, affine, momentum, loc, scale, seed):
    shape = (n, c, *spatial)
    rng = np.random.default_rng(seed)
    x, dy = rng.normal(loc, scale, size=shape), rng.normal(size=shape)
    w, b = (rng.normal(size=c), rng.normal(size=c)) if affine else (None, None)
    rm0, rv0 = rng.normal(size=c), rng.uniform(0.5, 2, size=c)
    y_ref, cache = R.instance_norm(x, w, b)
    dx_ref, dw_ref, db_ref = R.batch_norm_backward(dy, cache)
    rm_ref, rv_ref, _ = R.update_running_stats(rm0, rv0, cache.mean.mean(0), cache.var.mean(0), cache.count, momentum, 0)
    xt, wt, bt = tensors(x, w, b)
    rm, rv = torch.tensor(rm0), torch.tensor(rv0)
    y = NF.instance_norm(xt, rm, rv, wt, bt, True, momentum)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    check_grads([("dx", xt, dx_ref), ("dw", wt, dw_ref), ("db", bt, db_ref)])
    assert_rel(rm, rm_ref, 1e-12, "running_mean")
    assert_rel(rv, rv_ref, 1e-12, "running_var")
    assert_rel(NF.instance_norm(torch.tensor(x), rm, rv, None, None, False), R.batch_norm_eval(x, rm, rv), 1e-12, "eval")


@given(
    shape=st.tuples(st.integers(2, 5), st.integers(1, 3), st.lists(st.integers(1, 3), max_size=3)).map(
        lambda t: (t[0], t[1], *t[2])
    ),
    with_bias=st.booleans(),
    momentum=st.sampled_from([0.1, 0.9]),
    **data,
)
def test_mean_only_batch_norm_matches_reference(shape, with_bias, momentum, loc, scale, seed):
    rng = np.random.default_rng(seed)
    x, dy = rng.normal(loc, scale, size=shape), rng.normal(size=shape)
    c = shape[1]
    b = rng.normal(size=c) if with_bias else None
    rm0 = rng.normal(size=c)
    y_ref, mean = R.mean_only_batch_norm_train(x, b)
    dx_ref, db_ref = R.mean_only_batch_norm_backward(dy)
    rm_ref = R.update_running_stats(rm0, np.ones(c), mean, np.ones(c), 2, momentum, 0)[0]
    xt, bt = tensors(x, b)
    rm = torch.tensor(rm0)
    y = NF.mean_only_batch_norm(xt, rm, bt, training=True, momentum=momentum)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    check_grads([("dx", xt, dx_ref), ("db", bt, None if b is None else db_ref)])
    assert_rel(rm, rm_ref, 1e-12, "running_mean")
    assert_rel(NF.mean_only_batch_norm(torch.tensor(x), rm, None if b is None else torch.tensor(b)),
               R.mean_only_batch_norm_eval(x, rm.numpy(), b), 1e-12, "eval")


@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    dim=st.integers(-1, 3),
    seed=st.integers(0, 2**16),
)
def test_weight_norm_matches_reference(shape, dim, seed):
    dim = None if dim == -1 else dim % len(shape)
    assume(np.prod(shape) > (1 if dim is None else shape[dim]))  # slices of one value have dv = 0 exactly
    rng = np.random.default_rng(seed)
    v, dw = rng.normal(size=shape), rng.normal(size=shape)
    g_shape = () if dim is None else tuple(n if i == dim else 1 for i, n in enumerate(shape))
    g = rng.uniform(0.5, 2, size=g_shape)
    w_ref = R.weight_norm(v, g, dim)
    dv_ref, dg_ref = R.weight_norm_backward(dw, v, g, dim)
    vt, gt = tensors(v, g)
    w = NF.weight_norm(vt, gt, dim)
    w.backward(torch.tensor(dw))
    assert_rel(w, w_ref, 1e-12, "w")
    check_grads([("dv", vt, dv_ref), ("dg", gt, dg_ref)])
