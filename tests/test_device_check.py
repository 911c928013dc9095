"""benchmarks/device_check.py without a GPU: it reports that nothing was checked, its commands and
limits, its step runner (time limit included), and how it reads pytest's and the benchmark's output."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


def load():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_without_a_gpu_it_says_nothing_was_checked():
    out = run(env={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2
    lines = out.stdout.splitlines()
    assert lines[0].startswith("device check: no CUDA device, python ")
    assert lines[1].split() == ["step", "status", "time", "detail"]
    assert lines[2].split()[:2] == ["environment", "failed"]
    assert [line.split()[:3] for line in lines[3:5]] == [["gpu", "tests", "skipped"], ["benchmark", "skipped", "0s"]]
    assert lines[-1] == "result: nothing checked (no CUDA device)"


@pytest.mark.slow
def test_commands_run_every_kernel_test_on_the_device_within_the_limits():
    out = run("--dry-run", "--workers", "3", "--test-timeout", "50", "--bench-timeout", "100")
    assert out.returncode == 0, out.stderr
    commands = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert set(commands) == {"gpu tests", "benchmark"}  # no install: the source runs from PYTHONPATH
    assert "-m pytest -m gpu tests/gpu tests/kernels -q -n 3 --timeout=50" in commands["gpu tests"]
    assert commands["benchmark"].endswith("benchmarks/bench_gpu.py --quick --no-compile --time-limit 40")
    assert "pip install --no-deps" in run("--dry-run", "--install").stdout


def test_default_limits_fit_eight_minutes():
    args = load().parse_args([])
    assert args.tests_timeout + args.bench_timeout <= 7 * 60  # and a minute for starting, the environment


@pytest.mark.parametrize("bad,message", [(["--tests-timeout", "0"], "--tests-timeout must be positive, got 0"),
                                         (["--workers", "0"], "--workers must be at least 1, got 0"),
                                         (["--frobnicate"], "unrecognized arguments: --frobnicate")])
def test_bad_arguments_are_one_line_and_exit_2(bad, message):
    out = run(*bad)
    assert out.returncode == 2 and message in out.stderr.splitlines()[-1] and "Traceback" not in out.stderr


def test_a_step_is_stopped_at_its_limit_with_its_children(tmp_path):
    check = load()
    marker = tmp_path / "child"
    child = tmp_path / "child.py"
    child.write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').close()\n")
    # a parent that starts a child, as pytest starts its workers; both must end at the limit
    code = ("import subprocess, sys, time; print('started', flush=True); "
            f"subprocess.Popen([sys.executable, {str(child)!r}]); time.sleep(30)")
    status, seconds, output = check.run_step("slow", [sys.executable, "-c", code], 1.5, dict(os.environ),
                                             tmp_path / "slow.log")
    assert status == "timed out" and seconds < 10 and "started" in output
    assert (tmp_path / "slow.log").read_text().startswith("$ ")
    time.sleep(3)
    assert not marker.exists()  # the child went with its parent
    assert check.run_step("ok", [sys.executable, "-c", "print(1)"], 30, dict(os.environ), None)[0] == "passed"
    assert check.run_step("bad", [sys.executable, "-c", "raise SystemExit(3)"], 30, dict(os.environ), None)[0] \
        == "failed"


def test_test_counts_come_from_the_report_or_the_progress_lines(tmp_path):
    check = load()
    junit = tmp_path / "report.xml"
    junit.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1">'
                     '<testcase classname="tests.gpu.test_triton_gpu" name="test_a"><failure/></testcase>'
                     '<testcase classname="t" name="test_b"/></testsuite></testsuites>')
    assert check.test_counts(junit) == {"passed": 3, "failed": 1, "errors": 0, "skipped": 1}
    assert check.failed_tests(junit) == ["tests.gpu.test_triton_gpu::test_a"]
    assert check.test_counts(tmp_path / "absent.xml") == {}
    progress = "bringing up nodes...\n..F.s.... [ 50%]\n.E..x\n"
    assert check.progress_counts(progress) == {"passed": 10, "failed": 1, "errors": 1, "skipped": 2}
    assert check.progress_counts("collected 0 items") == {}


def test_benchmark_verdicts_are_kept():
    check = load()
    output = ("(32, 256, 56, 56) channels_first fp16 train 0.123 1.20\n"
              "geomean train: cudnn 1.10, native 1.50\ngeomean eval: cudnn 1.20\n\ntargets (docs/performance.md):\n"
              "  training fwd+bwd geomean speed-up vs torch (cuDNN) >= 1.3x: 1.10x (NOT met)\n"
              "  never below 0.95x: slowest 0.90x (NOT met; ...)\n")
    detail = check.bench_detail(output)
    assert detail.startswith("geomean train: cudnn 1.10") and "1.10x (NOT met)" in detail and "slowest 0.90x" in detail
    assert check.bench_detail("Traceback ...\nRuntimeError: boom\n") == "RuntimeError: boom"


def test_summary_names_the_failing_steps():
    check = load()
    info = {"python": "3.12.3", "torch": "2.11.0", "triton": "3.6.0", "gpu": "NVIDIA H200"}
    steps = [check.Step("environment", "passed", 0, "1 GPU(s)"), check.Step("gpu tests", "failed", 200, "1 failed"),
             check.Step("benchmark", "timed out", 150, "")]
    text = check.summary(info, steps)
    assert text.splitlines()[0] == "device check: NVIDIA H200, python 3.12.3, torch 2.11.0, triton 3.6.0"
    assert text.splitlines()[-1] == "result: FAILED (gpu tests, benchmark)"
    assert check.summary(info, steps[:1]).splitlines()[-1] == "result: passed"
