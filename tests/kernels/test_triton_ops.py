"""The Triton kernels as torch custom ops and as the "triton" backend of the layers.

gradcheck in float64 through the registered autograd, torch.library.opcheck (schema,
fake/meta implementation, autograd registration), torch.compile without graph breaks,
autocast, and the layers with the backend forced, against torch.nn. Without a GPU all
of it runs under the Triton interpreter on CPU tensors.
"""

import pytest
import torch

from triton_cases import DEVICE, skip_unless_kernels_run, split

skip_unless_kernels_run()

import normlab  # noqa: E402
from conftest import assert_rel  # noqa: E402
from normlab import backends  # noqa: E402
from normlab.kernels import triton_bn, triton_ops  # noqa: E402

pytestmark = pytest.mark.gpu  # on the GPU where there is one (pytest -m gpu tests/gpu tests/kernels)

f64 = dict(dtype=torch.float64, device=DEVICE)
OPS = torch.ops.normlab


def leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_() for s in shapes]


@pytest.mark.parametrize(
    "activation,residual,inplace_abn,training",
    [("identity", False, False, True), ("silu", True, False, True), ("leaky_relu", False, True, True),
     ("elu", False, True, True), ("relu", True, False, False)],
)
def test_gradcheck_through_the_registered_autograd(activation, residual, inplace_abn, training):
    x, w, b, r = leaves((3, 2, 4), (2,), (2,), (3, 2, 4))
    rm, rv = torch.zeros(2, **f64), torch.ones(2, **f64) + 0.5
    param = {"leaky_relu": 0.1, "elu": 1.0}.get(activation, 0.0)

    def f(x, w, b, *r):
        w = w.abs() + 1e-5 if inplace_abn else w
        return triton_ops.batch_norm_act(x, w, b, r[0] if r else None, None if training else rm,
                                         None if training else rv, training, 0.1, 1e-5, activation, param, inplace_abn)

    args = (x, w, b, r) if residual else (x, w, b)
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


def test_opcheck_forward_and_backward():
    x, w, b = (t.detach() for t in leaves((3, 2, 4), (2,), (2,)))
    rm, rv = torch.zeros(2, **f64), torch.ones(2, **f64)
    torch.library.opcheck(OPS.batch_norm_act.default, (x, w, b, None, rm, rv, True, 0.1, 1e-5, "relu", 0.0, False))
    torch.library.opcheck(OPS.batch_norm_act.default, (x, w, b, x, rm, rv, False, 0.1, 1e-5, "silu", 0.0, False))
    y, mean, rstd, _, _ = OPS.batch_norm_act(x, w, b, None, None, None, True, 0.1, 1e-5, "elu", 1.0, True)
    torch.library.opcheck(OPS.batch_norm_act_backward.default,
                          (torch.ones_like(y), y, w, b, None, mean, rstd, True, "elu", 1.0, True, False))


def test_fake_implementation_matches_the_real_one():
    """Shapes, dtypes and strides (channels-last kept) as torch.compile will assume them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 3, 4, 4, device=DEVICE).to(dtype=torch.float16, memory_format=torch.channels_last)
    w, b, rm, rv = torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE), torch.zeros(3, device=DEVICE), \
        torch.ones(3, device=DEVICE)
    args = (x, w, b, None, rm, rv, True, 0.1, 1e-5, "relu", 0.0, False)
    real = OPS.batch_norm_act(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = OPS.batch_norm_act(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    for r, f in zip(real, fake):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())


def test_torch_compile_captures_the_ops_in_one_graph():
    """fullgraph=True: the op (forward, running-statistics copy, backward) compiles without a break."""
    torch._dynamo.reset()
    x, w, b, r = leaves((2, 3, 5), (3,), (3,), (2, 3, 5))
    stats = {k: (torch.zeros(3, **f64), torch.ones(3, **f64)) for k in ("eager", "compiled")}

    def block(x, w, b, r, rm, rv):
        y = triton_ops.batch_norm_act(x, w, b, r, rm, rv, True, 0.1, 1e-5, "silu", 0.0, False)
        return (y * y).sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    expected = torch.autograd.grad(block(x, w, b, r, *stats["eager"]), (x, w, b, r))
    got = torch.autograd.grad(compiled(x, w, b, r, *stats["compiled"]), (x, w, b, r))
    for name, g, e in zip(("dx", "dweight", "dbias", "dresidual"), got, expected):
        assert_rel(g, e, 1e-12, name)
    assert_rel(stats["compiled"][1], stats["eager"][1], 1e-12, "running_var")


def test_torch_compile_of_a_layer_matches_eager():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    eager_bn = normlab.BatchNormAct(4, "relu").double().to(DEVICE)
    compiled_bn = torch.compile(normlab.BatchNormAct(4, "relu").double().to(DEVICE), backend="aot_eager")
    x = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64).to(DEVICE)
    r = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64).to(DEVICE)
    with normlab.use_backend("triton"):
        expected, got = eager_bn(x, residual=r), compiled_bn(x, residual=r)
    assert_rel(got, expected, 1e-12, "output")
    assert_rel(compiled_bn.running_var, eager_bn.running_var, 1e-12, "running_var")


def test_autocast_gives_what_torch_batch_norm_gives():
    """Under autocast a conv hands batch norm a bfloat16 tensor; parameters stay float32."""
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(DEVICE)
    ours, theirs = normlab.BatchNorm2d(4).to(DEVICE), torch.nn.BatchNorm2d(4).to(DEVICE)
    x = torch.randn(4, 3, 6, 6, generator=gen).to(DEVICE)
    with torch.autocast(device_type, dtype=torch.bfloat16), normlab.use_backend("triton"):
        h = conv(x)
        y, expected = ours(h), theirs(h)
    assert h.dtype == y.dtype == expected.dtype == torch.bfloat16
    assert_rel(y, expected, 2e-2, "y")
    assert_rel(ours.running_mean, theirs.running_mean, 1e-5, "running_mean")


@pytest.mark.parametrize("path", ["on_chip", "split"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_on_the_triton_backend_is_torchs(monkeypatch, channels_last, momentum, path):
    if path == "split":
        real = triton_bn.plan
        monkeypatch.setattr(triton_bn, "plan", lambda t, **_: real(t, **split(t)))
    gen = torch.Generator().manual_seed(0)
    ours = normlab.BatchNorm2d(3, momentum=momentum).to(DEVICE)
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum).to(DEVICE)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with normlab.use_backend("triton"):
        for step in range(2):
            x = (3 * torch.randn(6, 3, 4, 4, generator=gen) + 1).to(DEVICE, memory_format=fmt)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = ours(xa), theirs(xb)
            dy = torch.randn(ya.shape, generator=gen).to(DEVICE)
            ya.backward(dy), yb.backward(dy)
            assert_rel(ya, yb, 1e-5, "y")
            assert_rel(xa.grad, xb.grad, 1e-4, "dx")
        assert_rel(ours.weight.grad, theirs.weight.grad, 1e-5, "dweight")
        assert_rel(ours.bias.grad, theirs.bias.grad, 1e-5, "dbias")
        assert_rel(ours.running_mean, theirs.running_mean, 1e-6, "running_mean")
        assert_rel(ours.running_var, theirs.running_var, 1e-6, "running_var")
        assert ours.num_batches_tracked == theirs.num_batches_tracked == 2
        ours.eval(), theirs.eval()
        assert_rel(ours(x), theirs(x), 1e-5, "eval y")


@pytest.mark.parametrize("op,layer", [("batch_norm_act", dict(activation="silu")),
                                      ("inplace_abn", dict(activation="leaky_relu", inplace_abn=True))])
def test_batchnormact_runs_the_kernels_when_triton_is_chosen(monkeypatch, op, layer):
    calls = []
    real = triton_ops.batch_norm_act
    monkeypatch.setattr(triton_ops, "batch_norm_act", lambda *a: calls.append(a[11:]) or real(*a))
    bn = normlab.BatchNormAct(3, **layer).to(DEVICE)
    x = torch.randn(4, 3, 2, 2, device=DEVICE)
    # automatically: never on a CPU tensor; on a GPU, where the dispatch rule says so
    assert (backends.choose(op, x) == "triton") == (x.is_cuda and backends.triton_is_faster(op, x))
    with normlab.use_backend("triton"):
        assert backends.choose(op, x) == "triton"
        y = bn(x)
    assert calls == [(layer.get("inplace_abn", False), True)]  # (inplace_abn, skip_non_finite: the default guard)
    with normlab.use_backend("normlab"):
        expected = bn(x)
    assert_rel(y, expected, 1e-5, "same layer on the torch-ops path")


# --- the eager path ----------------------------------------------------------------------


def test_eager_steps_run_the_function_on_the_buffers_themselves(monkeypatch):
    """Eager mode: no custom op, the kernel writes the running statistics in place (no new tensors, no copy)."""
    monkeypatch.setattr(triton_ops, "_forward", lambda *a: pytest.fail("the custom op ran in eager mode"))
    seen = []
    real = triton_bn.forward
    monkeypatch.setattr(triton_bn, "forward", lambda *a, **k: seen.append((a[4], a[5], k, len(a))) or real(*a, **k))
    x, w, b = leaves((4, 3, 5), (3,), (3,))
    rm, rv = torch.zeros(3, **f64), torch.ones(3, **f64)
    y = triton_ops.batch_norm_act(x, w, b, None, rm, rv, True, 0.1, 1e-5, "relu", 0.0, False)
    (running_mean, running_var, options, positional), = seen
    assert running_mean is rm and running_var is rv and positional == 11 and "new_running" not in options
    assert y.grad_fn is not None and type(y.grad_fn).__name__ == "BatchNormActBackward"
    var = x.detach().var((0, 2))
    assert_rel(rv, 0.9 + 0.1 * var, 1e-10, "running_var updated in place")
    with torch.no_grad():  # nothing to differentiate: the forward kernel alone
        assert triton_ops.batch_norm_act(x, w, b, None, rm, rv, True, 0.1, 1e-5, "relu", 0.0, False).grad_fn is None


@pytest.mark.parametrize("path", ["on_chip", "split", "compiled"])
def test_non_finite_updates_are_skipped_on_the_device(monkeypatch, path):
    """A channel holding NaN keeps its running statistics; the others are updated."""
    if path == "split":
        real = triton_bn.plan
        monkeypatch.setattr(triton_bn, "plan", lambda t, **_: real(t, **split(t)))
    x = torch.randn(4, 3, 5, 5, **f64)
    x[1, 2, 3, 1] = float("nan")
    rm, rv = torch.full((3,), 0.5, **f64), torch.full((3,), 2.0, **f64)

    def step(x, rm, rv):
        return triton_ops.batch_norm_act(x, None, None, None, rm, rv, True, 0.1, 1e-5, "identity", 0.0, False, True)

    if path == "compiled":
        torch._dynamo.reset()
        step = torch.compile(step, backend="aot_eager", fullgraph=True)
    y = step(x, rm, rv)
    assert torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, :2]).all()
    assert rm[2] == 0.5 and rv[2] == 2.0  # left as they were
    assert_rel(rm[:2], 0.45 + 0.1 * x[:, :2].mean((0, 2, 3)), 1e-10, "running_mean of the finite channels")
    nan_propagates = x.clone()
    rm2, rv2 = rm.clone(), rv.clone()
    triton_ops.batch_norm_act(nan_propagates, None, None, None, rm2, rv2, True, 0.1, 1e-5, "identity", 0.0, False)
    assert torch.isnan(rm2[2]) and torch.isnan(rv2[2])  # without the flag, as torch does


def test_plans_are_cached_per_shape_strides_and_dtype():
    x = torch.randn(4, 3, 5, 5)
    first = triton_bn.plan(x)
    assert triton_bn.plan(torch.randn(4, 3, 5, 5)) is first  # same shape, strides, dtype: the same plan
    assert triton_bn._PLANS[(x.shape, x.stride(), x.dtype, x.device)] is first
    assert triton_bn.plan(x.to(memory_format=torch.channels_last)) != first
    assert triton_bn.plan(x.half()) is not first
    assert triton_bn.plan(x, on_chip=False) != first  # forcing a choice plans anew


@pytest.mark.parametrize("path", ["on_chip", "split"])
def test_layers_skip_non_finite_updates_in_the_kernel_on_the_buffers_themselves(monkeypatch, path):
    """non_finite="skip" (the default) on the triton backend: the kernel gets the running statistics
    themselves and skips the bad channel; the engine's guard (copies, torch.where) never runs."""
    from normlab import functional

    if path == "split":
        real_plan = triton_bn.plan
        monkeypatch.setattr(triton_bn, "plan", lambda t, **_: real_plan(t, **split(t)))
    monkeypatch.setattr(functional, "_Guard", lambda *a: pytest.fail("guarded an update the kernel skips itself"))
    seen = []
    real = triton_bn.forward
    monkeypatch.setattr(triton_bn, "forward", lambda *a, **k: seen.append((a[4], a[5], k)) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    ours, theirs = normlab.BatchNorm2d(3).to(DEVICE), torch.nn.BatchNorm2d(3).to(DEVICE)
    x = (3 * torch.randn(4, 3, 5, 5, generator=gen) + 1).to(DEVICE)
    x[1, 2, 3, 1] = float("nan")
    with normlab.use_backend("triton"):
        y = ours(x)
    theirs(x)
    (running_mean, running_var, options), = seen
    assert running_mean is ours.running_mean and running_var is ours.running_var
    assert options["skip_non_finite"] is True
    assert torch.isnan(y[:, 2]).all() and torch.isnan(theirs.running_mean[2])  # torch lets the NaN in
    assert ours.running_mean[2] == 0 and ours.running_var[2] == 1  # left as they were
    assert_rel(ours.running_mean[:2], theirs.running_mean[:2], 1e-6, "running_mean of the finite channels")
    assert_rel(ours.running_var[:2], theirs.running_var[:2], 1e-6, "running_var of the finite channels")
    assert ours.num_batches_tracked == 1


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf - inf
def test_raise_and_warn_keep_the_guard_around_the_kernel(monkeypatch):
    """The policies that report to the host are the engine's: the kernel updates in place, unskipped,
    and the guard puts the old values back (raise) or keeps them for the bad channel (warn)."""
    seen = []
    real = triton_bn.forward
    monkeypatch.setattr(triton_bn, "forward", lambda *a, **k: seen.append(k["skip_non_finite"]) or real(*a, **k))
    x = torch.randn(4, 3, 5, 5, device=DEVICE)
    x[0, 1, 0, 0] = float("inf")
    bn = normlab.BatchNorm2d(3, non_finite="raise").to(DEVICE)
    with normlab.use_backend("triton"):
        with pytest.raises(FloatingPointError, match=r"channel\(s\) 1 "):
            bn(x)
        assert (bn.running_mean == 0).all() and (bn.running_var == 1).all() and bn.num_batches_tracked == 0
        bn.non_finite = "warn"
        with pytest.warns(RuntimeWarning, match=r"channel\(s\) 1 "):
            bn(x)
    assert seen == [False, False]
    assert bn.running_mean[1] == 0 and bn.running_var[1] == 1 and bn.num_batches_tracked == 1
    assert bn.running_mean[0] != 0 and bn.running_var[2] != 1


@pytest.mark.parametrize("path", ["on_chip", "split"])
@pytest.mark.parametrize("activation,residual,inplace_abn", [("identity", False, False), ("silu", True, False),
                                                             ("relu", True, False), ("elu", False, True)])
def test_the_eager_function_matches_the_float64_reference(monkeypatch, path, activation, residual, inplace_abn):
    """The autograd Function's forward, the gradients it returns for each input, and the running
    statistics it updates in place, against normlab.reference."""
    from triton_cases import PARAM, make, reference

    if path == "split":
        real_plan = triton_bn.plan
        monkeypatch.setattr(triton_bn, "plan", lambda t, **_: real_plan(t, **split(t)))
    x, w, b, dy = make((5, 3, 4, 3), torch.float64, False, DEVICE, offset=0.5)
    r = make((5, 3, 4, 3), torch.float64, False, DEVICE, seed=1)[0] if residual else None
    w = w.abs() + 1e-5 if inplace_abn else w
    leaves = [t.clone().requires_grad_() for t in (x, w, b) + ((r,) if residual else ())]
    rm, rv = torch.zeros(3, **f64), torch.ones(3, **f64)
    y = triton_ops.batch_norm_act(leaves[0], leaves[1], leaves[2], leaves[3] if residual else None, rm, rv, True,
                                  0.1, 1e-5, activation, PARAM.get(activation, 0.0), inplace_abn)
    assert type(y.grad_fn).__name__ == "BatchNormActBackward"
    grads = torch.autograd.grad(y, leaves, dy)
    ey, edx, edw, edb, edres, mean, var = reference(x, w, b, dy, activation, r)
    for name, got, want in zip(("y", "dx", "dweight", "dbias", "dresidual"), (y, *grads), (ey, edx, edw, edb, edres)):
        assert_rel(got.detach().cpu(), want, 1e-10, name)
    m = x[:, 0].numel()
    assert_rel(rm.cpu(), 0.1 * mean, 1e-10, "running_mean")
    assert_rel(rv.cpu(), 0.9 + 0.1 * var * m / (m - 1), 1e-10, "running_var")


def test_gradients_only_for_the_inputs_that_need_them():
    x, w, b, r = leaves((4, 3, 5), (3,), (3,), (4, 3, 5))
    w.requires_grad_(False)
    r.requires_grad_(False)
    y = triton_ops.batch_norm_act(x, w, b, r, None, None, True, 0.1, 1e-5, "silu", 0.0, False)
    y.sum().backward()
    assert x.grad is not None and b.grad is not None and w.grad is None and r.grad is None


def test_split_launches_leave_their_counters_at_zero(monkeypatch):
    """The split kernels count arrivals per channel block; the last program resets its counter, so
    one zeroed buffer per device (and stream) serves every launch without a memset."""
    real_plan = triton_bn.plan
    monkeypatch.setattr(triton_bn, "plan", lambda t, **_: real_plan(t, **split(t)))
    monkeypatch.setattr(triton_bn, "_COUNTERS", {})
    x, w, b = leaves((6, 4, 7), (4,), (4,))
    for step in range(2):
        y = triton_ops.batch_norm_act(x, w, b, None, None, None, True, 0.1, 1e-5, "relu", 0.0, False)
        y.backward(torch.ones_like(y))
        (counters,) = triton_bn._COUNTERS.values()
        if step == 0:
            first = counters
        assert counters is first and counters.numel() >= 4 and (counters == 0).all()
    assert triton_bn.plan(x.detach()).n_chunks > 1  # the split path ran: several programs per channel block


def test_tensors_of_2_31_elements_and_more_take_the_triton_backend():
    """No size limit in the backend: from 2^31 elements the plans take 64-bit offsets
    (tests/kernels/test_triton_bn.py checks the plans; tests/gpu runs one on a GPU)."""
    huge = torch.empty(1, 1, device=DEVICE).expand(2**16, 2**15)  # 2^31 elements, no memory
    assert huge.numel() == 2**31 and backends.can_run("triton", "batch_norm", huge)
    assert triton_bn.plan(torch.empty(2**16, 2**15, device="meta")).big
