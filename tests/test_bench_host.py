"""benchmarks/bench_host.py: with the launches stubbed, a layer step on the triton backend launches
its kernels (into the stub) and the script reports the ratio to torch's step (timings meaningless here)."""

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_host.py"


@pytest.mark.slow
def test_the_stubbed_step_still_takes_the_triton_path_and_the_report_has_the_ratio():
    pytest.importorskip("triton")
    from normlab import kernels

    if not kernels._TRITON_USABLE:
        pytest.skip(f"needs triton >= {kernels.MIN_TRITON}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys; sys.path.insert(0, %r); sys.argv = ['bench_host.py']; import runpy; "
            "m = runpy.run_path(%r, run_name='bench'); calls = m['stub_launches'](); "
            "torch_step, layer_step, op_step = m['steps']((4, 3, 4, 4), True); "
            "layer_step(); n = len(calls); op_step(); print(n, len(calls) - n)") % (str(SCRIPT.parent), str(SCRIPT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    layer_launches, op_launches = map(int, out.stdout.split())
    assert layer_launches == op_launches == 2  # on chip: one kernel forward, one backward
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kernel launches stubbed" in out.stdout.splitlines()[0]
    assert out.stdout.splitlines()[-1].startswith("layer step / torch's: geomean ")
