"""benchmarks/bench_gpu.py without a GPU: it says so and exits; the dispatch rule it derives;
its measuring code runs (on the Triton interpreter, timings meaningless)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import torch

import triton_cases  # noqa: F401  (switches the Triton interpreter on where there is no GPU)

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def load():
    sys.path.insert(0, str(SCRIPT.parent))  # as `python benchmarks/bench_gpu.py` does, for _timing
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exits_with_a_clear_message_without_a_cuda_device():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 2
    assert "no CUDA device is present" in out.stderr and "NVIDIA GPU" in out.stderr
    assert out.stdout == ""


def test_rule_is_the_smallest_size_from_which_every_shape_was_faster():
    bench = load()
    f16 = torch.float16
    rule = bench.derive_rule({
        ("batch_norm", "channels_last", f16): [(10, 0.8), (100, 1.2), (1000, 0.9), (10000, 1.1), (100000, 1.5)],
        ("batch_norm", "channels_first", f16): [(10, 1.1), (100, 1.2)],
        ("inplace_abn", "channels_first", f16): [(10, 0.9), (100, 0.99)],
    })
    assert rule == {("batch_norm", "channels_first", f16): 10, ("batch_norm", "channels_last", f16): 10000,
                    ("inplace_abn", "channels_first", f16): None}
    pasted = {}
    exec(bench.format_rule(rule), {"torch": torch}, pasted)  # the printed table is valid Python
    assert pasted["TRITON_RULE"] == rule


def test_grid_is_the_issues():
    bench = load()
    shapes = {c.shape for c in bench.cases(quick=False)}
    assert {(n, c, s, s) for n in (32, 256) for c, s in bench.RESNET50} <= shapes
    assert (100000, 32) in shapes
    assert {c.layout for c in bench.cases(quick=False) if len(c.shape) == 4} == {"channels_first", "channels_last"}
    assert set(bench.DTYPES.values()) == {torch.float32, torch.float16, torch.bfloat16}


def test_every_implementation_is_measured(monkeypatch):
    triton_cases.skip_unless_kernels_run()
    bench = load()
    calls = []
    monkeypatch.setattr(bench, "bench_ms", lambda fn, grad_to_none=None: calls.append(fn()) or 1.0)
    for train in (True, False):
        times = bench.measure(bench.Case((4, 3, 2, 2), "channels_last"), torch.float32, train,
                              torch.device(triton_cases.DEVICE), compile_=False)
        assert set(times) == {"triton", "cudnn", "native", "fused", "torch_bn_relu", "abn", "abn_fallback",
                              "torch_bn_leaky"}
    assert len(calls) == 16
