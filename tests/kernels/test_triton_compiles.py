"""The Triton kernels compile for NVIDIA GPUs (sm_80, sm_90) down to cubin, without a GPU, and their
main loops on sm_90 stay within the instructions per element that memory speed leaves room for."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from normlab import kernels

triton = pytest.importorskip("triton")
if not kernels._TRITON_USABLE:
    pytest.skip(f"normlab's kernels need triton >= {kernels.MIN_TRITON}, this is {triton.__version__}",
                allow_module_level=True)


@pytest.mark.slow
def test_kernels_compile_for_a100_and_h100_and_their_loops_are_lean(tmp_path):
    script = pathlib.Path(__file__).with_name("compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, and leave no cache behind
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns while the default is unset
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "compiled" in out.stdout and "of 6 kernels" in out.stdout, out.stdout
    rows = [r.split("|")[1:-1] for r in out.stdout.splitlines() if re.match(r"\| (statistics|apply|backward)", r)]
    loops = {(loop.strip(), shape.strip(), dtype.strip()): (float(n), widths, cp_async.strip())
             for loop, shape, dtype, n, widths, cp_async in rows}
    assert len(loops) == 32
    for (loop, shape, dtype), (per_element, widths, cp_async) in loops.items():
        if dtype != "fp32" and loop in ("statistics", "apply"):
            assert per_element <= 15, (loop, shape, dtype, per_element)
        if "7x7" not in shape:  # the others' rows are multiples of 4 elements: vector loads, pipelined
            assert min(int(w) for w in widths.split(",")) >= 8 and cp_async == "yes", (loop, shape, dtype)
