"""The Triton kernels on a real CUDA GPU: large shapes against the float64 reference, launch limits
(a second GPU, 2^31 elements, more channels than a grid axis of 65,535), the automatic dispatch,
torch.compile with Inductor, and the memory in-place ABN saves.

Skipped without CUDA. (The small-shape grid of tests/kernels, both paths forced, also
runs on the GPU when one is present.) Run: ``pytest -m gpu tests/gpu tests/kernels``, or
``benchmarks/device_check.py``, which runs them with a time limit.

The reference for GPU-sized tensors is the same float64 math computed by torch on the
device (``triton_cases.expected(on_device=True)``; tests/kernels checks it against
``normlab.reference`` on small inputs).
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from triton_cases import PARAM, TOL, assert_gradients, make, skip_unless_kernels_run  # noqa: E402

skip_unless_kernels_run()

import normlab  # noqa: E402
from conftest import assert_rel  # noqa: E402
from normlab import backends  # noqa: E402
from normlab.kernels import triton_bn, triton_ops  # noqa: E402

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# ResNet-50 stage shapes at batch 32, BatchNorm1d (100000 x 32), small spatial extents, 7x7 at batch 256 (split)
LARGE = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7),
         (256, 2048, 7, 7), (100000, 32), (256, 2048, 1, 1), (256, 1024, 2, 2)]


def run(x, w, b, dy, activation, residual=None, inplace_abn=False, training=True):
    param = PARAM.get(activation, 0.0)
    w = w.abs() + 1e-5 if inplace_abn else w
    rm, rv = torch.zeros_like(w), torch.ones_like(w)
    y, mean, rstd = triton_bn.forward(x, w, b, residual, rm, rv, training, 0.1, 1e-5, activation, param)
    dx, dw, db, dres = triton_bn.backward(dy, y if inplace_abn else x, w, b, None if inplace_abn else residual,
                                          mean, rstd, training, activation, param, inplace_abn, residual is not None)
    return dict(y=y, dx=dx, dw=dw, db=db, dres=dres, rv=rv, w=w)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("shape", LARGE, ids=str)
def test_large_shapes_match_the_reference(shape, channels_last, dtype):
    if channels_last and len(shape) != 4:
        pytest.skip("channels-last is a 4-D layout; (N, C) already has its channels side by side")
    x, w, b, dy = make(shape, dtype, channels_last, "cuda")
    out = run(x, w, b, dy, "identity")
    assert out["y"].stride() == x.stride()
    assert_gradients(out, x, w, b, dy, tol=TOL[dtype], ptol=1e-4, on_device=True)
    var = x.double().var([0, *range(2, x.dim())], unbiased=True)
    assert_rel(out["rv"], 0.9 + 0.1 * var, 1e-5, "running_var")  # updated once, whatever the autotuner tried


@pytest.mark.parametrize("activation,residual,abn", [("relu", True, False), ("silu", False, False),
                                                     ("leaky_relu", False, True), ("elu", False, True)])
@pytest.mark.parametrize("shape", [(32, 256, 56, 56), (32, 2048, 7, 7)], ids=str)
def test_fused_paths_on_large_shapes(shape, activation, residual, abn):
    x, w, b, dy = make(shape, torch.float16, True, "cuda", offset=0.0, scale=1.0)
    r = make(shape, torch.float16, True, "cuda", seed=1)[0] if residual else None
    out = run(x, w, b, dy, activation, r, abn)
    # ReLU and leaky ReLU: many of 25M values lie within rounding of the kink; the check allows for their flips
    tol = 4 * TOL[torch.float16] if abn else TOL[torch.float16]  # in-place ABN recovers x_hat from a float16 y
    assert_gradients(out, x, out["w"], b, dy, activation, r, tol=tol, ptol=1e-3, on_device=True)


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_inference_on_a_large_shape(channels_last):
    """One pass forward; backward writes dx in the pass that sums dweight and dbias."""
    x, w, b, dy = make((32, 256, 56, 56), torch.float16, channels_last, "cuda")
    rm, rv = torch.linspace(-1, 1, 256, device="cuda"), torch.linspace(0.5, 2, 256, device="cuda")
    y, mean, rstd = triton_bn.forward(x, w, b, None, rm, rv, False, 0.1, 1e-5, "silu")
    dx, dw, db, _ = triton_bn.backward(dy, x, w, b, None, mean, rstd, False, "silu")
    view = [1, -1, 1, 1]
    z = (x.double() - rm.double().view(view)) * torch.rsqrt(rv.double().view(view) + 1e-5) * w.double().view(view) \
        + b.double().view(view)
    assert_rel(y, torch.nn.functional.silu(z), TOL[torch.float16], "y")
    s = torch.sigmoid(z)
    dz = dy.double() * s * (1 + z * (1 - s))
    assert_rel(dx, dz * (w.double() * torch.rsqrt(rv.double() + 1e-5)).view(view), TOL[torch.float16], "dx")
    assert_rel(db, dz.sum((0, 2, 3)), 1e-3, "dbias")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_another_gpu_launch_there():
    x, w, b, dy = make((8, 16, 8, 8), torch.float32, False, "cuda:1")
    assert torch.cuda.current_device() == 0
    out = run(x, w, b, dy, "relu")
    assert out["y"].device == x.device
    assert_gradients(out, x, w, b, dy, "relu", on_device=True)


def test_two_to_the_31_elements_take_64_bit_offsets():
    """2^31 + 2^13 float16 values: the statistics of the last channel, and y past 2^31, as torch computes them."""
    N, C, L = 2, 4, 2**28 + 2**10
    x = torch.randn(N, C, L, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31 and triton_bn.plan(x).big
    w, b = torch.rand(C, device="cuda") + 0.5, torch.randn(C, device="cuda")
    y, mean, rstd = triton_bn.forward(x, w, b, None, None, None, True, 0.1, 1e-5)
    var, mu = torch.var_mean(x[:, -1].float(), unbiased=False)
    assert_rel(rstd[-1:], torch.rsqrt(var + 1e-5)[None], 1e-4, "rstd of the last channel")
    tail = x[-1, -1, -4096:].float()  # the last elements, past 2^31
    assert_rel(y[-1, -1, -4096:].float(), (tail - mu) * torch.rsqrt(var + 1e-5) * w[-1] + b[-1], 1e-2, "y")
    dy = torch.ones_like(x)
    dx, dw, db, _ = triton_bn.backward(dy, x, w, b, None, mean, rstd, True)
    assert_rel(db, torch.full((C,), float(N * L), device="cuda"), 1e-4, "dbias")
    assert dx[-1, -1, -4096:].float().abs().max() < 1e-2  # a constant dy has no gradient through the mean


@pytest.mark.parametrize("on_chip", [True, False])
def test_more_channels_than_a_grid_axis_allows(monkeypatch, on_chip):
    """100,000 channels, a program or more each: the grid is one axis, where CUDA allows 2^31 - 1 programs."""
    x, w, b, dy = make((4, 100000, 3), torch.float16, False, "cuda")
    real = triton_bn.plan
    monkeypatch.setattr(triton_bn, "plan", lambda t, **_: real(t, on_chip=on_chip))
    assert triton_bn.plan(x).grid[0] >= 100000
    assert_gradients(run(x, w, b, dy, "identity"), x, w, b, dy, ptol=1e-4, on_device=True)


def test_automatic_dispatch_follows_the_rule(monkeypatch):
    x = torch.randn(8, 16, 8, 8, device="cuda", dtype=torch.float16)
    for op in ("batch_norm", "batch_norm_act", "inplace_abn"):
        expected = "triton" if backends.triton_is_faster(op, x) else ("normlab" if op == "inplace_abn" else "native")
        assert backends.choose(op, x) == expected
    calls = []
    real = triton_ops.batch_norm_act
    monkeypatch.setattr(triton_ops, "batch_norm_act", lambda *a: calls.append(1) or real(*a))
    layer = normlab.BatchNormAct(16, "relu").cuda()
    layer(x)
    assert len(calls) == int(backends.triton_is_faster("batch_norm_act", x))


def test_inductor_compiles_a_model_with_the_ops():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), normlab.BatchNormAct(16, "silu")).cuda()
    x = torch.randn(8, 3, 16, 16, device="cuda")
    with normlab.use_backend("triton"):
        expected = model(x)
        got = torch.compile(model)(x)
    assert_rel(got, expected, 1e-5, "compiled")


def test_inplace_abn_keeps_half_the_memory_of_bn_relu():
    """The BN + activation pairs of a conv stack: torch keeps x and y, in-place ABN only y."""
    def saved_bytes(norm_act):
        torch.manual_seed(0)
        layers = []
        for c_in, c_out in ((3, 64), (64, 64), (64, 128)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), norm_act(c_out)]
        model = torch.nn.Sequential(*layers).cuda()
        storages = {}
        pairs = [m for m in model if not isinstance(m, torch.nn.Conv2d)]
        inside = []
        for m in pairs:
            m.register_forward_pre_hook(lambda *_: inside.append(1))
            m.register_forward_hook(lambda *_: inside.pop() and None)  # a hook returning a value replaces the output

        def pack(t):
            if inside:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), normlab.use_backend("triton"):
            model(torch.randn(16, 3, 32, 32, device="cuda")).sum().backward()
        return sum(storages.values())

    plain = saved_bytes(lambda c: torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU()))
    abn = saved_bytes(lambda c: normlab.BatchNormAct(c, "leaky_relu", inplace_abn=True))
    assert abn <= 0.55 * plain
