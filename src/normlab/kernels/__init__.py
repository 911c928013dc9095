"""normlab's Triton kernels (:mod:`normlab.kernels.triton_bn`) and their torch ops (:mod:`normlab.kernels.triton_ops`).

Batch norm, batch norm + activation and in-place activated batch norm, one kernel each way,
for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``, for tests). They need the
optional ``triton`` package, version :data:`MIN_TRITON` or later; this module says whether
it is there without importing it. The backend that runs them is ``normlab.backends.triton``
(opt-in: ``normlab.use_backend("triton")``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

__all__ = ["MIN_TRITON"]

# The oldest triton the kernels are tested with (the interpreter tests, and compiling for
# sm_80 and sm_90); older ones, such as the 3.0 that torch 2.4 installs, are not used.
MIN_TRITON = (3, 3)


def _major_minor(version: str) -> tuple[int, int]:
    """``"2.6.0+cpu"`` -> ``(2, 6)``."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked with sys.modules[name] = None
        return False


def _triton_version() -> tuple[int, ...] | None:
    """The installed triton's (major, minor), without importing it; None when unknown."""
    for distribution in ("triton", "pytorch-triton", "pytorch-triton-rocm"):  # PyPI's, torch nightlies'
        try:
            return _major_minor(importlib.metadata.version(distribution))
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return None


_TRITON_USABLE = _installed("triton") and (_triton_version() or MIN_TRITON) >= MIN_TRITON
