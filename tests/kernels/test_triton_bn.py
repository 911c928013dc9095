"""The Triton kernels (normlab.kernels.triton_bn) against the float64 reference.

Without a GPU they run under the Triton interpreter, on small shapes. Each case runs
twice: on the default plan (a channel block fits one tile: the on-chip path) and on a
forced tiny plan that splits every channel's rows over several programs (the split
path, partial statistics merged with Chan's formula).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_cases import DEVICE, PARAM, TOL, make, reference, skip_unless_kernels_run

skip_unless_kernels_run()

from conftest import assert_rel  # noqa: E402
from normlab.kernels import triton_bn  # noqa: E402

SPLIT = triton_bn.Plan(block_r=16, block_c=2, chunk=32)  # 3 chunks of 2 tiles for M = 96
PATHS = {"on_chip": None, "split": SPLIT}


def run(x, weight, bias, dy, activation="identity", residual=None, plan=None, inplace_abn=False,
        running=True, training=True):
    C = x.shape[1]
    rm = torch.linspace(-1, 1, C, device=x.device) if running else None
    rv = torch.linspace(0.5, 2, C, device=x.device) if running else None
    rm0, rv0 = (None, None) if rm is None else (rm.clone(), rv.clone())
    param = PARAM.get(activation, 0.0)
    w = weight.abs() + 1e-5 if inplace_abn else weight
    y, mean, rstd = triton_bn.forward(x, w, bias, residual, rm, rv, training, 0.1, 1e-5, activation, param,
                                      plan_=plan)
    saved = y if inplace_abn else x
    dx, dw, db, dres = triton_bn.backward(dy, saved, w, bias, None if inplace_abn else residual, mean, rstd,
                                          training, activation, param, inplace_abn, residual is not None,
                                          plan_=plan)
    return dict(y=y, mean=mean, rstd=rstd, dx=dx, dw=dw, db=db, dres=dres, rm=rm, rv=rv, rm0=rm0, rv0=rv0, w=w)


def check(out, x, dy, bias, activation="identity", residual=None, what="", tol=None):
    tol = tol or TOL[x.dtype]
    y, dx, dw, db, dres, mean, var = reference(x, out["w"], bias, dy, activation, residual)
    assert_rel(out["y"].cpu(), y, tol, f"{what} y")
    assert_rel(out["dx"].cpu(), dx, tol, f"{what} dx")
    # parameter gradients and statistics are sums in float32, whatever x's dtype
    ptol = max(TOL[out["dw"].dtype], 1e-5)
    assert_rel(out["dw"].cpu(), dw, ptol, f"{what} dweight")
    assert_rel(out["db"].cpu(), db, ptol, f"{what} dbias")
    first = x[(0, slice(None), *[0] * (x.dim() - 2))].cpu().double()  # training's mean is of x - first
    assert_rel(out["mean"].cpu().double() + first, mean, ptol, f"{what} mean")
    assert_rel(out["rstd"].cpu(), 1 / np.sqrt(var + 1e-5), ptol, f"{what} rstd")
    if residual is not None:
        assert_rel(out["dres"].cpu(), dres, tol, f"{what} dresidual")
    if out["rm"] is not None:
        m = x[:, 0].numel()
        rm0, rv0 = (t.cpu().double().numpy() for t in (out["rm0"], out["rv0"]))
        assert_rel(out["rm"].cpu(), 0.9 * rm0 + 0.1 * mean, 1e-6, f"{what} running_mean")
        assert_rel(out["rv"].cpu(), 0.9 * rv0 + 0.1 * var * m / (m - 1), 1e-6,
                   f"{what} running_var")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_training_forward_backward(channels_last, dtype, path):
    x, w, b, dy = make((6, 3, 4, 4), dtype, channels_last, DEVICE)
    out = run(x, w, b, dy, plan=PATHS[path])
    assert out["y"].stride() == x.stride() and out["dx"].stride() == x.stride()
    check(out, x, dy, b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape,channels_last", [((96, 5), False), ((4, 3, 24), False), ((3, 2, 2, 4, 4), True)],
                         ids=["2d", "3d", "5d_channels_last"])
def test_other_ranks(shape, channels_last, path):
    x, w, b, dy = make(shape, torch.float64, channels_last, DEVICE)
    check(run(x, w, b, dy, plan=PATHS[path]), x, dy, b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation", triton_bn.ACTIVATIONS)
def test_fused_activation(activation, path):
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, path == "split", DEVICE, offset=0.0)
    check(run(x, w, b, dy, activation, plan=PATHS[path]), x, dy, b, activation)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation", ["identity", "relu", "silu"])
def test_residual_add_before_activation(activation, path):
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, path == "on_chip", DEVICE, offset=0.0)
    residual = make((6, 3, 4, 4), torch.float32, path == "on_chip", DEVICE, seed=1)[0]
    check(run(x, w, b, dy, activation, residual, plan=PATHS[path]), x, dy, b, activation, residual)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ["identity", "leaky_relu", "elu"])
def test_inplace_abn_recomputes_from_the_output(activation, dtype, path):
    """Backward from y alone gives the gradients of the straightforward BN + activation."""
    x, w, b, dy = make((6, 3, 4, 4), dtype, path == "split", DEVICE, offset=0.0, scale=1.0)
    out = run(x, w, b, dy, activation, plan=PATHS[path], inplace_abn=True)
    if dtype == torch.float64:
        check(out, x, dy, b, activation, what="abn", tol=1e-8)  # the slope reaches the kernel as float32
    else:
        # y is stored in float16, so x_hat recovered from it carries float16 rounding
        y, dx, *_ = reference(x, out["w"], b, dy, activation)
        assert_rel(out["y"].cpu(), y, TOL[dtype], "abn y")
        assert_rel(out["dx"].cpu(), dx, 3 * TOL[dtype], "abn dx")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_inference(channels_last, path):
    """y = act(gamma (x - running_mean) rstd + beta); backward treats the statistics as constants."""
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, channels_last, DEVICE)
    out = run(x, w, b, dy, "silu", plan=PATHS[path], training=False)
    xs, rm, rv = (t.detach().double().cpu().numpy() for t in (x, out["rm"], out["rv"]))
    from normlab import reference as R

    z = R.batch_norm_eval(xs, rm, rv, w.double().cpu().numpy(), b.double().cpu().numpy(), 1e-5)
    assert_rel(out["y"].cpu(), R.activation(z, "silu"), TOL[x.dtype], "y")
    dz = dy.double().cpu().numpy() * R.activation_grad(z, "silu")
    gain = (w.double().cpu().numpy() / np.sqrt(rv + 1e-5)).reshape(1, -1, 1, 1)
    assert_rel(out["dx"].cpu(), dz * gain, TOL[x.dtype], "dx")
    x_hat = (xs - rm.reshape(1, -1, 1, 1)) / np.sqrt(rv + 1e-5).reshape(1, -1, 1, 1)
    assert_rel(out["dw"].cpu(), (dz * x_hat).sum((0, 2, 3)), 1e-5, "dweight")
    assert torch.equal(out["rm"], out["rm0"]) and torch.equal(out["rv"], out["rv0"])


@pytest.mark.parametrize("path", PATHS)
def test_without_affine_parameters_or_running_statistics(path):
    x, _, _, dy = make((6, 3, 4, 4), torch.float32, False, DEVICE)
    y, mean, rstd = triton_bn.forward(x, None, None, None, None, None, True, 0.1, 1e-5, plan_=PATHS[path])
    dx, dw, db, _ = triton_bn.backward(dy, x, None, None, None, mean, rstd, True, plan_=PATHS[path])
    ref_y, ref_dx, ref_dw, ref_db, *_ = reference(x, None, None, dy)
    assert_rel(y.cpu(), ref_y, 2e-5, "y")
    assert_rel(dx.cpu(), ref_dx, 2e-5, "dx")
    assert_rel(dw.cpu(), ref_dw if ref_dw is not None else (dy.double() * torch.tensor(ref_y)).sum((0, 2, 3)),
               1e-5, "dweight (computed even without weight)")


@pytest.mark.parametrize("path", PATHS)
def test_statistics_are_stable_far_from_zero(path):
    """A mean of 1e4 and a spread of 1: E[x^2] - E[x]^2 would lose the variance in float32."""
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, True, DEVICE, offset=1e4, scale=1.0)
    out = run(x, w, b, dy, plan=PATHS[path])
    var = reference(x, out["w"], b, dy)[-1]
    assert_rel(1 / out["rstd"].cpu().double() ** 2 - 1e-5, var, 1e-5, "var")
    check(out, x, dy, b)


def test_plan_splits_long_channels_and_keeps_short_ones_on_chip():
    programs = 4 * 132  # an H100's multiprocessors
    short = triton_bn.plan(32 * 49, 2048, channels_contiguous=False, programs=programs)
    assert short.block_r >= 32 * 49 and short.block_r * short.block_c <= triton_bn.ON_CHIP
    M, C = 32 * 112 * 112, 64
    for channels_contiguous in (False, True):
        long = triton_bn.plan(M, C, channels_contiguous, programs)
        chunks = -(-M // long.chunk)
        assert long.block_r < M and long.chunk % long.block_r == 0
        assert 1 < chunks <= triton_bn.MAX_CHUNKS and (chunks - 1) * long.chunk < M
        blocks = -(-C // long.block_c)
        assert chunks * blocks >= 0.9 * min(programs, triton_bn.MAX_CHUNKS * blocks)  # the grid fills the GPU
    assert triton_bn.plan(M, C, True, programs).block_c == 32  # channels-last: a row of channels per load


def test_unmergeable_layout_is_computed_in_a_contiguous_copy():
    """Spatial axes that cannot be merged into one (W outermost) still give correct results."""
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, False, DEVICE)
    x, dy = (t.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2) for t in (x, dy))
    assert triton_bn._rows_view(x) is None
    out = run(x, w, b, dy)
    assert out["y"].stride() == x.stride()
    check(out, x, dy, b)


def test_bad_arguments():
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, False, DEVICE)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        triton_bn.forward(x, w, b, None, None, None, True, 0.1, 1e-5, "gelu")
    with pytest.raises(ValueError, match="inference needs running_mean"):
        triton_bn.forward(x, w, b, None, None, None, False, 0.1, 1e-5)
    with pytest.raises(ValueError, match="invertible activation"):
        triton_bn.backward(dy, x, w, b, None, w, w, True, "relu", 0.0, from_output=True)


@settings(max_examples=12)
@given(
    n=st.integers(2, 5), c=st.integers(1, 5), h=st.integers(1, 4), w=st.integers(1, 4),
    channels_last=st.booleans(), activation=st.sampled_from(triton_bn.ACTIVATIONS), residual=st.booleans(),
    split=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_matches_the_reference(n, c, h, w, channels_last, activation, residual, split, seed):
    x, wt, b, dy = make((n, c, h, w), torch.float64, channels_last, DEVICE, seed=seed, offset=0.5)
    r = make((n, c, h, w), torch.float64, channels_last, DEVICE, seed=seed + 1)[0] if residual else None
    plan = triton_bn.Plan(block_r=4, block_c=2, chunk=8) if split else None
    check(run(x, wt, b, dy, activation, r, plan=plan), x, dy, b, activation, r, tol=1e-8)
