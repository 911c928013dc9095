"""BatchRenorm1d/2d/3d and functional.batch_renorm: batch norm exactly at rmax=1, dmax=0 (and
during the warm-up); the training output is the inference output when r and d are not
clipped; the paper's schedule on num_batches_tracked; against the float64 reference;
first and second derivatives where r and d are clipped (so constants in truth)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import normlab
from normlab import functional as NF
from normlab import reference as R
from conftest import assert_rel

CASES = [
    (normlab.BatchRenorm1d, normlab.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 3)),
    (normlab.BatchRenorm2d, normlab.BatchNorm2d, torch.nn.BatchNorm2d, (4, 4, 3, 2)),
    (normlab.BatchRenorm3d, normlab.BatchNorm3d, torch.nn.BatchNorm3d, (2, 4, 2, 3, 2)),
]
NO_SCHEDULE = {"warmup_steps": 0, "rmax_full_at": 0, "dmax_full_at": 0}


def run_steps(layers, shape, steps=3, seed=0):
    """Train each layer on the same batches; returns per layer its outputs and input gradients."""
    gen = torch.Generator().manual_seed(seed)
    results = [[] for _ in layers]
    for step in range(steps):
        x = 3 * torch.randn(shape, generator=gen) + 2 * step + 1
        dy = torch.randn(shape, generator=gen)
        for layer, out in zip(layers, results):
            xi = x.clone().requires_grad_()
            y = layer(xi)
            y.backward(dy)
            out += [y.detach(), xi.grad]
    return results


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].__name__)
@pytest.mark.parametrize("schedule", ["rmax=1,dmax=0", "warm-up"])
def test_is_batch_norm_exactly_at_rmax_1_dmax_0(backend, case, schedule):
    renorm_cls, bn_cls, torch_cls, shape = case
    kwargs = {"rmax": 1.0, "dmax": 0.0, **NO_SCHEDULE} if schedule == "rmax=1,dmax=0" else {"warmup_steps": 5}
    renorm, bn, theirs = renorm_cls(4, momentum=0.3, **kwargs), bn_cls(4, momentum=0.3), torch_cls(4, momentum=0.3)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5), theirs.bias.normal_()
    renorm.load_state_dict(theirs.state_dict()), bn.load_state_dict(theirs.state_dict())
    ours, same, torchs = run_steps([renorm, bn, theirs], shape)
    for a, b, c in zip(ours, same, torchs):
        assert torch.equal(a, b)
        assert_rel(a, c, 1e-5)
    for name in ("weight", "bias"):
        assert torch.equal(getattr(renorm, name).grad, getattr(bn, name).grad)
    for (name, a), b in zip(renorm.state_dict().items(), bn.state_dict().values()):
        assert torch.equal(a, b), name
    renorm.eval(), bn.eval()
    x = torch.randn(shape)
    assert torch.equal(renorm(x), bn(x))


def test_renormalization_path_at_r_1_d_0_is_batch_norm():
    """Not only the shortcut: r and d computed and equal to 1 and 0 reproduce batch norm."""
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(5, 3, 4, generator=gen, dtype=torch.float64) + 1
    w, b = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5, torch.randn(3, generator=gen, dtype=torch.float64)
    mean, var = x.mean((0, 2)), x.var((0, 2), unbiased=False)  # running = batch statistics
    with normlab.use_backend("normlab"):
        y = NF.batch_renorm(x, mean.clone(), var.clone(), w, b, training=True, momentum=0.0, rmax=3.0, dmax=5.0)
        y_bn = NF.batch_norm(x, None, None, w, b, training=True)
    assert_rel(y, y_bn, 1e-13)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0].__name__)
def test_training_output_equals_inference_output_when_running_equal_batch_statistics(backend, case):
    renorm_cls, _, _, shape = case
    layer = renorm_cls(4, warmup_steps=0, rmax_full_at=0, dmax_full_at=0).double()
    x = 4 * torch.randn(shape, dtype=torch.float64) - 3
    dims = (0, *range(2, len(shape)))
    with torch.no_grad():
        layer.running_mean.copy_(x.mean(dims))
        layer.running_var.copy_(x.var(dims, unbiased=False))  # sigma = sqrt(running_var + eps) = sigma_B
        layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    inference = layer.eval()(x)
    training = layer.train()(x)
    assert_rel(training, inference, 1e-12)


@pytest.mark.parametrize("rmax,dmax", [(math.inf, math.inf), (30.0, 20.0)])
def test_unclipped_training_output_is_the_inference_output_of_the_running_statistics(rmax, dmax):
    """y = gamma * (x_hat * r + d) + beta = gamma * (x - mu) / sigma + beta whenever nothing is clipped."""
    layer = normlab.BatchRenorm2d(3, rmax=rmax, dmax=dmax, **NO_SCHEDULE).double()
    gen = torch.Generator().manual_seed(3)
    x = 2 * torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64) + 1
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([3.0, 0.5, 8.0]))
    inference = layer.eval()(x)
    assert_rel(layer.train()(x), inference, 1e-12)


def test_schedule_follows_the_paper_on_num_batches_tracked():
    layer = normlab.BatchRenorm2d(3)  # rmax 1 -> 3 by 40k steps, dmax 0 -> 5 by 25k, after 5k of batch norm
    expected = {0: (1, 0), 4999: (1, 0), 5000: (1, 0), 15000: (1 + 2 * 10 / 35, 5 * 10 / 20),
                25000: (1 + 2 * 20 / 35, 5), 40000: (3, 5), 10**6: (3, 5)}
    for step, (rmax, dmax) in expected.items():
        assert layer.limits(step) == pytest.approx((rmax, dmax), rel=1e-12), step
    assert layer.limits() == (1.0, 0.0)
    layer(torch.randn(4, 3, 2, 2))
    assert layer.num_batches_tracked.item() == 1  # the step counter is the state_dict's own
    # a checkpoint resumes the schedule where it was; reset_running_stats restarts the warm-up
    sd = torch.nn.BatchNorm2d(3).state_dict()
    sd["num_batches_tracked"].fill_(25000)
    layer.load_state_dict(sd)
    assert layer.limits() == pytest.approx((1 + 2 * 20 / 35, 5.0))
    layer.reset_running_stats()
    assert layer.limits() == (1.0, 0.0)


def test_forward_uses_the_limits_of_the_current_step():
    gen = torch.Generator().manual_seed(2)
    layer = normlab.BatchRenorm1d(3, warmup_steps=2, rmax_full_at=4, dmax_full_at=3, momentum=0.5).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([4.0, -4.0, 0.0]))
        layer.running_var.copy_(torch.tensor([0.1, 20.0, 1.0]))
    for step in range(6):
        x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
        rm, rv = layer.running_mean.clone(), layer.running_var.clone()
        rmax, dmax = layer.limits()
        assert (rmax, dmax) == pytest.approx((1 + 2 * min(max(step - 2, 0) / 2, 1), 5 * min(max(step - 2, 0), 1)))
        expected = NF.batch_renorm(x, rm, rv, layer.weight, layer.bias, True, 0.5, layer.eps, rmax, dmax)
        assert_rel(layer(x), expected, 1e-14, f"step {step}")
        assert_rel(layer.running_mean, rm, 1e-14)


@given(
    shape=st.sampled_from([(5, 3), (3, 2, 4), (2, 3, 2, 3)]),
    rmax=st.sampled_from([1.0, 1.2, 3.0, math.inf]),
    dmax=st.sampled_from([0.0, 0.3, 5.0]),
    affine=st.booleans(),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(shape, rmax, dmax, affine, masked, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x, dy = rng.normal(1, 2, size=shape), rng.normal(size=shape)
    rm, rv = rng.normal(size=c), rng.uniform(0.2, 6, size=c)
    w, b = (rng.normal(size=c), rng.normal(size=c)) if affine else (None, None)
    mask = None
    if masked:
        mask = rng.random((shape[0], *shape[2:])) < 0.7
        mask.flat[:2] = True
    y_ref, rc = R.batch_renorm_train(x, rm, rv, w, b, 1e-3, rmax, dmax, mask=mask)
    dx_ref, dw_ref, db_ref = R.batch_renorm_backward(dy, rc)
    m_ref, v_ref, _ = R.update_running_stats(rm, rv, rc.cache.mean, rc.cache.var, rc.cache.count, 0.2, 0)

    xt = torch.tensor(x, requires_grad=True)
    wt, bt = (None, None) if not affine else (torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True))
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    mt = None if mask is None else torch.tensor(mask)
    y = NF.batch_renorm(xt, rmt, rvt, wt, bt, True, 0.2, 1e-3, rmax, dmax, mask=mt)
    y.backward(torch.tensor(dy))
    assert_rel(y, y_ref, 1e-10, "y")
    assert_rel(xt.grad, dx_ref, 1e-8, "dx")
    if affine:
        assert_rel(wt.grad, dw_ref, 1e-10, "dgamma")
        assert_rel(bt.grad, db_ref, 1e-10, "dbeta")
    assert_rel(rmt, m_ref, 1e-12, "running_mean")
    assert_rel(rvt, v_ref, 1e-12, "running_var")


def test_gradcheck_and_gradgradcheck_with_r_and_d_clipped():
    """With r and d at their limits they are constant in truth, so finite differences see the
    stop-gradient backward; r = 1/1.2 and d = -0.1 here."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 2, dtype=torch.double, generator=gen, requires_grad=True)
    w = torch.randn(3, dtype=torch.double, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, generator=gen, requires_grad=True)
    rm, rv = torch.full((3,), 50.0, dtype=torch.double), torch.full((3,), 100.0, dtype=torch.double)

    def f(x, w, b):
        return NF.batch_renorm(x, rm, rv, w, b, training=True, momentum=0.0, eps=1e-3, rmax=1.2, dmax=0.1)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_state_dict_is_batch_norms():
    renorm, bn = normlab.BatchRenorm2d(3), torch.nn.BatchNorm2d(3)
    assert list(renorm.state_dict()) == list(bn.state_dict())
    bn(torch.randn(4, 3, 2, 2))
    renorm.load_state_dict(bn.state_dict())
    bn.load_state_dict(renorm.state_dict())
    assert "rmax=3.0, dmax=5.0, warmup_steps=5000" in repr(renorm)


def test_bad_arguments_name_the_layer():
    with pytest.raises(ValueError, match=r"BatchRenorm2d\(3\): needs track_running_stats=True: r and d compare"):
        normlab.BatchRenorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"BatchRenorm1d\(3\): needs rmax >= 1 and dmax >= 0, got rmax=0.5, dmax=5.0"):
        normlab.BatchRenorm1d(3, rmax=0.5)
    with pytest.raises(ValueError, match=r"BatchRenorm3d\(3\): the schedule's steps must be non-negative"):
        normlab.BatchRenorm3d(3, warmup_steps=-1)
    with pytest.raises(ValueError, match=r"BatchRenorm2d\(3\): expected a 4-D \(N, C, H, W\) input, got a 3-D"):
        normlab.BatchRenorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="batch_renorm: training needs running_mean and running_var"):
        NF.batch_renorm(torch.randn(4, 3), None, None, training=True)
    with pytest.raises(ValueError, match="batch_renorm: needs rmax >= 1"):
        NF.batch_renorm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, rmax=0.0)
