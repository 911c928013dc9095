"""The Triton kernels compile for NVIDIA GPUs (sm_80, sm_90) down to cubin, without a GPU."""

import os
import pathlib
import subprocess
import sys

import pytest

from normlab import kernels

triton = pytest.importorskip("triton")
if not kernels._TRITON_USABLE:
    pytest.skip(f"normlab's kernels need triton >= {kernels.MIN_TRITON}, this is {triton.__version__}",
                allow_module_level=True)


@pytest.mark.slow
def test_kernels_compile_for_a100_and_h100(tmp_path):
    script = pathlib.Path(__file__).with_name("compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, and leave no cache behind
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns while the default is unset
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled" in out.stdout and "of 6 kernels" in out.stdout, out.stdout
