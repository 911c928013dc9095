"""The Triton kernels (normlab.kernels.triton_bn) against the float64 reference.

Without a GPU they run under the Triton interpreter, on small shapes. Each case runs
twice: on the default plan (a channel block fits one tile: the on-chip path) and on a
forced plan of small tiles that splits every channel over several programs (the split
path, :func:`split`), so that the per-slot Welford states, their merge by the last
program of each channel block, and the masked tails all run.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_cases import DEVICE, PARAM, TOL, assert_gradients, make, reference, skip_unless_kernels_run, split

skip_unless_kernels_run()

from conftest import assert_rel  # noqa: E402
from normlab.kernels import triton_bn  # noqa: E402

pytestmark = pytest.mark.gpu  # on the GPU where there is one (pytest -m gpu tests/gpu tests/kernels)



PATHS = {"on_chip": None, "split": split}


def run(x, weight, bias, dy, activation="identity", residual=None, plan=None, inplace_abn=False,
        running=True, training=True):
    C = x.shape[1]
    plan = None if plan is None else triton_bn.plan(x, **(plan(x) if callable(plan) else plan))
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
    *_, mean, var = reference(x, out["w"], bias, dy, activation, residual)
    # parameter gradients and statistics are sums in float32, whatever x's dtype
    ptol = max(TOL[out["dw"].dtype], 1e-5)
    assert_gradients(out, x, out["w"], bias, dy, activation, residual, tol, ptol, what)
    # training's mean is of x - its first row for float32 and float64 (the shift), of x for 16-bit inputs
    first = x[(0, slice(None), *[0] * (x.dim() - 2))].cpu().double()
    first = first if x.dtype in (torch.float32, torch.float64) else torch.zeros_like(first)
    assert_rel(out["mean"].cpu().double() + first, mean, ptol, f"{what} mean")
    assert_rel(out["rstd"].cpu(), 1 / np.sqrt(var + 1e-5), ptol, f"{what} rstd")
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


@pytest.mark.parametrize("path", [*PATHS, "split_64_bit"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_inference(channels_last, path):
    """y = act(gamma (x - running_mean) rstd + beta); backward treats the statistics as constants."""
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, channels_last, DEVICE)
    out = run(x, w, b, dy, "silu", plan=PATHS.get(path) or (lambda x: dict(split(x), big=True)), training=False)
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
    p = triton_bn.plan(x, **split(x)) if path == "split" else None
    y, mean, rstd = triton_bn.forward(x, None, None, None, None, None, True, 0.1, 1e-5, plan_=p)
    dx, dw, db, _ = triton_bn.backward(dy, x, None, None, None, mean, rstd, True, plan_=p)
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


H100_PROGRAMS = 2 * 4 * 132  # what a plan aims at on an H100 or H200: two waves of four programs per multiprocessor
RESNET50 = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]


def planned(shape, dtype=torch.float16, channels_last=False, **forced):
    """The plan an H100 would get for a tensor of this shape (a meta tensor: no memory)."""
    x = torch.empty(shape, dtype=dtype, device="meta")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return triton_bn.plan(x, programs=H100_PROGRAMS, **forced)


def test_plan_keeps_what_fits_a_tile_on_chip_and_splits_the_rest():
    # channels-first: a channel is N rows of H*W; 7x7 and 14x14 at batch 32 fit 8192 elements
    for c, s, block_b in ((2048, 7, 64), (1024, 14, 256)):
        p = planned((32, c, s, s))
        assert p.on_chip and not p.channels_last and (p.block_a, p.block_b) == (32, block_b)
        assert p.block_a * p.block_b <= triton_bn.ON_CHIP and p.grid == (c,)
    # channels-last: 64 channels (128 bytes) a row, so on chip needs at most 128 rows
    assert not planned((32, 2048, 7, 7), channels_last=True).on_chip
    assert not planned((32, 1024, 14, 14), channels_last=True).on_chip
    assert planned((4, 2048, 4, 4), channels_last=True).on_chip  # 64 rows
    assert planned((16, 2048, 4, 4), torch.float32, channels_last=True).on_chip  # 256 rows of 32 float32 channels
    assert not planned((16, 2048, 4, 4), channels_last=True).on_chip  # 256 rows of 64 float16 channels
    for shape in ((256, 1024, 4, 4), (256, 2048, 2, 2), (512, 2048, 1, 1)):  # the benchmark's small-spatial cases
        assert not planned(shape, channels_last=True).on_chip
    assert planned((32, 2048, 7, 7), torch.float32, channels_last=True).block_b == 32  # 128 bytes of float32


@pytest.mark.parametrize("c,s", RESNET50, ids=str)
def test_plan_tiles_resnet_shapes_with_aligned_unmasked_columns(c, s):
    p = planned((32, c, s, s), on_chip=False)
    S = s * s
    # column tiles end where rows end (no ragged tile), or one tile spans the row, masked
    assert p.even_b and (p.B % p.block_b == 0 or p.B < p.block_b)
    assert p.block_b * 2 <= triton_bn.MIN_TILE_BYTES  # a tile of any configuration holds a whole row of columns
    # the widest load the strides allow: 16 bytes where S is a multiple of 8, 8 bytes for 14x14, 2 for 7x7
    assert p.align == math.gcd(8, S)
    q = planned((32, c, s, s), channels_last=True)
    assert q.channels_last and q.block_b == 64 and q.align == 8 and not q.mask_b


@pytest.mark.parametrize("shape,channels_last", [*(((n, c, s, s), cl) for n in (32, 256) for c, s in RESNET50
                                                   for cl in (False, True)), ((100000, 32), False),
                                                 ((256, 1024, 4, 4), True), ((256, 2048, 2, 2), True)], ids=str)
def test_plan_grid_fills_the_gpu_and_stays_within_cudas_limits(shape, channels_last):
    for dtype in (torch.float16, torch.float32):
        p = planned(shape, dtype, channels_last)
        (programs,) = p.grid  # one axis: CUDA allows 2^31 - 1 programs there, 65,535 on the others
        assert programs < 2**31
        if not p.on_chip:
            assert programs >= 2 * 132  # at least two waves of one program per multiprocessor
            assert 1 <= p.n_chunks <= triton_bn.MAX_CHUNKS and p.merge_rows * p.cpb <= triton_bn.MERGE_TILE
            rows = -(-p.A // p.chunk_a)
            assert rows * p.b_chunks == p.n_chunks and (rows - 1) * p.chunk_a < p.A
    wide = planned((2, 100000, 3))  # more channel blocks than a second grid axis could take
    assert wide.grid == (100000,)


def test_plan_switches_to_64_bit_offsets_from_2_31_elements():
    assert not planned((2**15, 2**16 - 1)).big
    assert planned((2**15, 2**16)).big  # 2^31 elements
    assert planned((1, 4, 2**29)).big  # 2^31 elements, the channel stride alone is 2^29
    x = torch.empty(2**31 + 8, device="meta")
    assert triton_bn.plan(x[: 2**20].view(2**10, 2**10)).big is False
    strided = x.as_strided((2, 4), (2**31, 1))  # few elements, offsets past 2^31
    assert triton_bn.plan(strided).big


def test_split_path_with_ragged_column_tiles_and_64_bit_offsets():
    """Rows of 12 in tiles of 8: every second tile is partial, so every tile counts per slot."""
    x, w, b, dy = make((6, 3, 3, 4), torch.float32, False, DEVICE, offset=0.5)
    forced = dict(on_chip=False, block_b=8, config=(64, 1, 1), chunk_a=4)
    assert not triton_bn.plan(x, **forced).even_b
    check(run(x, w, b, dy, "relu", plan=forced), x, dy, b, "relu")
    check(run(x, w, b, dy, "relu", plan=dict(forced, big=True)), x, dy, b, "relu")


def test_unmergeable_layout_is_computed_in_a_contiguous_copy():
    """Spatial axes that cannot be merged into one (W outermost) still give correct results."""
    x, w, b, dy = make((6, 3, 4, 4), torch.float32, False, DEVICE)
    x, dy = (t.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2) for t in (x, dy))
    assert triton_bn.geometry(x.shape, x.stride()) is None
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
    split_=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_matches_the_reference(n, c, h, w, channels_last, activation, residual, split_, seed):
    x, wt, b, dy = make((n, c, h, w), torch.float64, channels_last, DEVICE, seed=seed, offset=0.5)
    r = make((n, c, h, w), torch.float64, channels_last, DEVICE, seed=seed + 1)[0] if residual else None
    check(run(x, wt, b, dy, activation, r, plan=PATHS["split" if split_ else "on_chip"]), x, dy, b, activation, r,
          tol=1e-8)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "silu"])
def test_the_on_device_reference_is_normlab_reference(activation):
    """tests/gpu compares GPU-sized tensors with the reference computed in float64 by torch on the
    device; on small inputs that must be normlab.reference's answer."""
    from triton_cases import expected

    x, w, b, dy = make((5, 3, 2, 3), torch.float64, False, "cpu", offset=0.3)
    r = make((5, 3, 2, 3), torch.float64, False, "cpu", seed=1)[0]
    numpy_, torch_ = (expected(x, w, b, dy, activation, r, on_device=d) for d in (False, True))
    for key in numpy_:
        assert_rel(torch_[key], numpy_[key].reshape(torch_[key].shape), 1e-12, key)


def test_launches_go_to_the_inputs_gpu(monkeypatch):
    """Triton launches on the current device; the kernels switch to the input's for the launch."""
    class OnSecondGpu:
        is_cuda = True
        device = torch.device("cuda", 1)

        def get_device(self):
            return 1

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    guard = triton_bn._on_device(OnSecondGpu())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert not isinstance(triton_bn._on_device(OnSecondGpu()), torch.cuda.device)  # already there: nothing to do
    with triton_bn._on_device(torch.zeros(2, 3)):  # CPU tensors (the interpreter): nothing to switch
        pass
