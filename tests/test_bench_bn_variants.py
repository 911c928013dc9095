"""benchmarks/bench_bn_variants.py runs (--quick) and prints a ratio for every variant and mode."""

import pathlib
import re
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_bn_variants.py"


@pytest.mark.slow
def test_quick_run_prints_the_ratios():
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("(")]
    assert len(rows) == 4  # two shapes x (train, eval)
    for mode in ("train fwd+bwd", "eval fwd"):
        (line,) = [line for line in run.stdout.splitlines() if line.startswith(f"geomean {mode}")]
        ratios = [float(r) for r in re.findall(r"\d+\.\d+", line)]
        assert len(ratios) == 4 and all(r > 0 for r in ratios)
