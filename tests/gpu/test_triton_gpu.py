"""The Triton kernels on a real CUDA GPU: large shapes against the float64 reference, the
automatic dispatch, torch.compile with Inductor, and the memory in-place ABN saves.

Skipped without CUDA. (The small-shape grid of tests/kernels, both paths forced, also
runs on the GPU when one is present.) Run: ``pytest -m gpu tests/gpu tests/kernels``.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from triton_cases import PARAM, TOL, make, reference, skip_unless_kernels_run  # noqa: E402

skip_unless_kernels_run()

import normlab  # noqa: E402
from conftest import assert_rel  # noqa: E402
from normlab import backends  # noqa: E402
from normlab.kernels import triton_bn, triton_ops  # noqa: E402

pytestmark = pytest.mark.gpu
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# ResNet-50 stage shapes at batch 32, BatchNorm1d (100000 x 32), small spatial extents
LARGE = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7),
         (100000, 32), (256, 2048, 1, 1), (256, 1024, 2, 2)]


def run(x, w, b, dy, activation, residual=None, inplace_abn=False):
    param = PARAM.get(activation, 0.0)
    w = w.abs() + 1e-5 if inplace_abn else w
    rm, rv = torch.zeros_like(w), torch.ones_like(w)
    y, mean, rstd = triton_bn.forward(x, w, b, residual, rm, rv, True, 0.1, 1e-5, activation, param)
    dx, dw, db, dres = triton_bn.backward(dy, y if inplace_abn else x, w, b, None if inplace_abn else residual,
                                          mean, rstd, True, activation, param, inplace_abn, residual is not None)
    return y, dx, dw, db, dres, rv, w


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("shape", LARGE, ids=str)
def test_large_shapes_match_the_reference(shape, channels_last, dtype):
    if channels_last and len(shape) != 4:
        pytest.skip("channels-last is a 4-D layout; (N, C) already has its channels side by side")
    x, w, b, dy = make(shape, dtype, channels_last, "cuda")
    y, dx, dw, db, _, rv, _ = run(x, w, b, dy, "identity")
    ry, rdx, rdw, rdb, _, _, var = reference(x, w, b, dy)
    assert_rel(y.cpu(), ry, TOL[dtype], "y")
    assert_rel(dx.cpu(), rdx, 2 * TOL[dtype], "dx")
    assert_rel(dw.cpu(), rdw, 1e-4, "dweight")
    assert_rel(db.cpu(), rdb, 1e-4, "dbias")
    m = x.numel() // x.shape[1]
    assert_rel(rv.cpu(), 0.9 + 0.1 * var * m / (m - 1), 1e-5, "running_var")


@pytest.mark.parametrize("activation,residual,abn", [("relu", True, False), ("silu", False, False),
                                                     ("leaky_relu", False, True), ("elu", False, True)])
@pytest.mark.parametrize("shape", [(32, 256, 56, 56), (32, 2048, 7, 7)], ids=str)
def test_fused_paths_on_large_shapes(shape, activation, residual, abn):
    x, w, b, dy = make(shape, torch.float16, True, "cuda", offset=0.0, scale=1.0)
    r = make(shape, torch.float16, True, "cuda", seed=1)[0] if residual else None
    y, dx, dw, db, dres, _, w_used = run(x, w, b, dy, activation, r, abn)
    ry, rdx, rdw, rdb, rdres, _, _ = reference(x, w_used, b, dy, activation, r)
    assert_rel(y.cpu(), ry, TOL[torch.float16], "y")
    assert_rel(dx.cpu(), rdx, 4 * TOL[torch.float16], "dx")
    assert_rel(dw.cpu(), rdw, 1e-3, "dweight")
    if r is not None:
        assert_rel(dres.cpu(), rdres, TOL[torch.float16], "dresidual")


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
