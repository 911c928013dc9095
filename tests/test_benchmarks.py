"""The benchmark scripts run: each with --quick, in a fresh process, as a user would start it.
No timing is asserted; only that the script completes and prints its summary."""

import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["bench_norms.py", "bench_batchnorm.py"])
def test_benchmark_runs_quick(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the test runs beside other workers
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--rounds", "1", "--min-time", "0"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "geomean" in done.stdout and "train fwd+bwd" in done.stdout and "eval fwd" in done.stdout


@pytest.mark.slow
def test_lab_throughput_benchmark_runs_quick():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_lab_throughput.py"), "--quick", "--rounds", "1"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "faster-training MLP" in done.stdout and "group 3" in done.stdout and "normlab / torch" in done.stdout


def test_lab_throughput_benchmark_refuses_an_unknown_kind():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_lab_throughput.py"), "--kinds", "transformer"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not done.stdout
    assert "--kinds: none of 'transformer'" in done.stderr and "bn-only CNN" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_lab_executors_benchmark_runs_quick():
    pytest.importorskip("ray")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_lab_executors.py"), "--quick", "--jobs", "2"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "ray / pool (Ray's overhead)" in done.stdout and "pool alone / pool (what grouping gives)" in done.stdout
