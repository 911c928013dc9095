"""The backend table and the one place that chooses: the automatic choice, forcing a backend, and
that forcing takes effect; the Triton kernels only when forced; a new backend is a new file."""

import pytest
import torch

import normlab
from normlab import autograd, backends, kernels


def test_automatic_choice_on_cpu_is_torchs_own_kernel():
    assert normlab.get_backend() is None
    assert backends.choose("batch_norm", torch.randn(2, 3)) == "native"
    for op in ("inplace_abn", "batch_norm_statistics", "mean_only_batch_norm"):  # ops torch lacks
        assert backends.choose(op, torch.randn(2, 3)) == "normlab"


def test_the_table_has_every_op_of_every_backend_with_one_signature():
    assert set(backends.TABLE) == set(backends.OPS)
    for op, impls in backends.TABLE.items():
        assert "normlab" in impls, f"{op}: normlab's own backend runs every operation"
        assert set(impls) <= set(backends.BACKENDS)
    assert set(backends.TABLE["batch_norm"]) == {"native", "normlab", "triton"}


def test_a_new_backend_is_a_module_with_implementations(monkeypatch):
    """What a backend module provides is all the table needs: here one that doubles layer norm."""
    import types

    calls = []
    fake = types.SimpleNamespace(
        IMPLEMENTATIONS={"layer_norm": lambda x, shape, w, b, eps: calls.append(1) or 2 * x}, can_run=lambda op, x: True)
    monkeypatch.setattr(backends, "BACKENDS", (*backends.BACKENDS, "fake"))
    monkeypatch.setitem(backends._modules, "fake", fake)
    monkeypatch.setitem(backends.TABLE["layer_norm"], "fake", fake.IMPLEMENTATIONS["layer_norm"])
    x = torch.randn(2, 3)
    with normlab.use_backend("fake"):
        assert torch.equal(normlab.LayerNorm(3)(x), 2 * x)
        assert backends.choose("batch_norm", x) == "native"  # what it lacks falls back to the automatic choice
    assert calls == [1]


def test_use_backend_is_scoped_and_nests():
    with normlab.use_backend("normlab"):
        assert backends.choose("batch_norm", torch.randn(2, 3)) == "normlab"
        with normlab.use_backend(None):
            assert backends.choose("batch_norm", torch.randn(2, 3)) == "native"
        assert normlab.get_backend() == "normlab"
    assert normlab.get_backend() is None


def test_set_backend_until_reset():
    normlab.set_backend("normlab")
    try:
        assert normlab.get_backend() == "normlab"
    finally:
        normlab.set_backend(None)
    assert normlab.get_backend() is None


@pytest.mark.parametrize("forced,own_calls", [(None, 0), ("native", 0), ("normlab", 1)])
def test_the_module_runs_the_chosen_backend(monkeypatch, forced, own_calls):
    calls = []
    real = autograd.Normalize.apply
    monkeypatch.setattr(autograd.Normalize, "apply", lambda *a: calls.append(1) or real(*a))
    with normlab.use_backend(forced):
        normlab.BatchNorm2d(3)(torch.randn(2, 3, 4, 4))
    assert len(calls) == own_calls


# --- the triton backend ------------------------------------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402


def test_triton_rule_is_read_per_op_layout_and_dtype(monkeypatch):
    x = torch.randn(2, 8, 4, 4)
    assert backends.layout(x) == "channels_first"
    assert backends.layout(x.to(memory_format=torch.channels_last)) == "channels_last"
    assert backends.layout(torch.randn(5, 8)) == "channels_last"  # (N, C): channels side by side
    monkeypatch.setattr(backends, "TRITON_RULE", {("batch_norm", "channels_first", torch.float32): 256})
    assert backends.triton_is_faster("batch_norm", x)  # 256 elements
    assert not backends.triton_is_faster("batch_norm", x[:1])  # 128
    assert not backends.triton_is_faster("batch_norm", x.half())  # absent from the table
    assert not backends.triton_is_faster("batch_norm_act", x)


def test_without_a_gpu_measurement_the_kernels_run_only_when_forced():
    """No GPU has measured them yet: the rule is empty, so on CUDA as on the CPU the automatic choice
    is torch's kernel (BatchNormAct, in-place ABN: torch's BN then the activation, normlab's Function)."""
    assert backends.TRITON_RULE == {}
    x = torch.randn(4, 8, 2, 2)
    for op in ("batch_norm", "batch_norm_act", "inplace_abn"):
        assert not backends.triton_is_faster(op, x)


def test_triton_backend_only_takes_what_the_kernels_run():
    assert not backends.can_run("triton", "layer_norm", torch.randn(2, 3))
    assert not backends.can_run("triton", "batch_norm", torch.randn(2, 3, 1, 1, 1, 2))  # 6-D
    assert not backends.can_run("triton", "batch_norm", torch.zeros(0, 3))
    assert not backends.can_run("triton", "batch_norm", torch.zeros(4, 3, dtype=torch.int64))


CPU_SCRIPT = textwrap.dedent("""
    import sys
    if BLOCK:
        sys.modules["triton"] = None  # as if it were not installed
    import torch, normlab
    from normlab import backends
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    with normlab.use_backend("triton"):  # cannot run: falls back to the automatic choice
        assert backends.choose("batch_norm", x) == "native", backends.choose("batch_norm", x)
        assert backends.choose("inplace_abn", x) == "normlab"
        for layer in (normlab.BatchNorm2d(3), normlab.BatchNormAct(3, "silu"),
                      normlab.BatchNormAct(3, "elu", inplace_abn=True)):
            layer(x).sum().backward()
    assert x.grad is not None
    if BLOCK:
        try:
            import normlab.kernels.triton_ops
        except ImportError:
            pass
        else:
            raise AssertionError("imported the kernels without triton")
    print("ok")
""")


@pytest.mark.parametrize("block", [True, False], ids=["without_triton", "triton_without_interpreter"])
@pytest.mark.slow
def test_cpu_layers_never_need_triton(block):
    """`import normlab` and every layer work without triton; with triton, CPU tensors never take it."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", f"BLOCK = {block}\n" + CPU_SCRIPT], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("installed,expected", [
    ({"triton": "3.0.0"}, (3, 0)),  # what torch 2.4 installs: below MIN_TRITON, not used
    ({"triton": "3.9.1"}, (3, 9)),
    ({"pytorch-triton": "3.4.0+git1234"}, (3, 4)),  # torch nightlies' distribution
    ({}, None),
])
def test_triton_version_is_read_without_importing_it(monkeypatch, installed, expected):
    import importlib.metadata

    def version(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert kernels._triton_version() == expected
    assert kernels.MIN_TRITON > (3, 0)


@pytest.mark.parametrize("native_16_bit", [False, True])
def test_rms_norm_of_16_bit_inputs_stays_off_torch_where_torch_computes_in_16_bits(monkeypatch, native_16_bit):
    # with this torch's rule: a mean square far below float16's epsilon, computed in float32
    x = torch.full((2, 4), 3e-4, dtype=torch.float16)
    expected = x.double() / torch.sqrt(x.double().square().mean(-1, keepdim=True) + torch.finfo(torch.float32).eps)
    assert (normlab.RMSNorm(4, dtype=torch.float16)(x).double() - expected).abs().max() < 1e-2 * expected.abs().max()
    monkeypatch.setattr(backends.native, "RMS_NORM_16_BIT_NATIVE", native_16_bit)
    half, single = torch.randn(2, 4, dtype=torch.float16), torch.randn(2, 4)
    assert backends.choose("rms_norm", single) == "native"
    assert backends.choose("rms_norm", half) == ("native" if native_16_bit else "normlab")
    with normlab.use_backend("native"):  # forcing torch's where it falls short falls back to the rule
        assert backends.choose("rms_norm", half) == ("native" if native_16_bit else "normlab")


def test_only_triton_skips_non_finite_updates_itself():
    """skipping_implementation's shortcut (no forced backend, no rule: None) is what choosing gives."""
    x = torch.randn(4, 3, 2, 2)
    assert {name for impls in backends.SKIPPING.values() for name in impls} <= {"triton"}
    assert set(backends.SKIPPING["batch_norm"]) == {"triton"}
    for op in backends.OPS:
        assert backends.skipping_implementation(op, x) is None
        assert backends.SKIPPING[op].get(backends.choose(op, x)) is None
    with normlab.use_backend("normlab"):
        assert backends.skipping_implementation("batch_norm", x) is None
