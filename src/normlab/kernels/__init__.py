"""Compute backends, and the one place that chooses among them.

Backends:
    "native"   PyTorch's own kernels (``torch.nn.functional``), for the operations torch has.
    "normlab"  normlab's own implementation (:mod:`normlab.autograd`): hand-derived
               backward, shifted two-pass statistics; runs every operation on any device.
    "triton"   normlab's Triton kernels (:mod:`normlab.kernels.triton_bn`) for batch norm,
               batch norm + activation and in-place activated batch norm, on CUDA tensors
               (and on CPU tensors under ``TRITON_INTERPRET=1``, for tests); needs the
               optional ``triton`` package, version :data:`MIN_TRITON` or later.

:func:`choose` is consulted by every function in :mod:`normlab.functional`. Unless a
backend is forced, it picks, on the CPU, torch's own kernel where torch has one (the
fastest there except for RMSNorm training: see ``docs/performance.md``), and on CUDA
tensors the Triton kernels where :data:`TRITON_RULE` says they are faster (see
``docs/kernels.md``). Force one with :func:`use_backend` (a context manager) or
:func:`set_backend`; a forced backend that cannot run an operation falls back to this
rule for that operation.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util

import torch

__all__ = ["BACKENDS", "MIN_TRITON", "NATIVE_OPS", "TRITON_OPS", "TRITON_RULE", "can_run", "choose", "get_backend",
           "layout", "set_backend", "triton_is_faster", "use_backend"]

BACKENDS = ("native", "normlab", "triton")

# Operations torch implements with the same semantics as normlab's (in torch.nn.functional;
# weight_norm is torch._weight_norm, what torch.nn.utils.parametrizations.weight_norm runs).
NATIVE_OPS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "weight_norm"})

# Operations the Triton kernels implement (normlab.functional.batch_norm / batch_norm_act).
TRITON_OPS = frozenset({"batch_norm", "batch_norm_act", "inplace_abn"})

# When "triton" runs an op on a CUDA tensor: (op, layout, dtype) -> the smallest input, in
# elements, from which it does; absent or None: never. NOT YET MEASURED: no GPU was
# reachable when this was written, so the table states an expectation, not a result:
# the fused ops replace two or three torch kernels (or, for in-place ABN, normlab's
# torch-ops Function) and move fewer bytes, so they take the kernels; plain batch norm
# stays on torch's (cuDNN) until a measurement shows the kernels win.
# `python benchmarks/bench_gpu.py` prints the table its measurements imply, in this
# format, to replace this one.
TRITON_RULE: dict[tuple[str, str, torch.dtype], int | None] = {
    (op, lay, dtype): (None if op == "batch_norm" else 0)
    for op in sorted(TRITON_OPS)
    for lay in ("channels_first", "channels_last")
    for dtype in (torch.float16, torch.bfloat16, torch.float32)
}

# The forced backend: process-wide, like torch.backends' flags, and a plain global so that
# torch.compile can trace (and guard on) the choice.
_forced: str | None = None


def _check_name(name: str | None) -> None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown normlab backend {name!r}; expected one of {BACKENDS} or None")


def set_backend(name: str | None) -> None:
    """Force ``name`` for every later call; None restores the automatic choice."""
    global _forced
    _check_name(name)
    _forced = name


def get_backend() -> str | None:
    """The forced backend, or None when the choice is automatic."""
    return _forced


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force ``name`` inside a ``with`` block::

    with normlab.use_backend("normlab"):
        y = bn(x)  # runs normlab's own implementation
    """
    global _forced
    _check_name(name)
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def _major_minor(version: str) -> tuple[int, int]:
    """``"2.6.0+cpu"`` -> ``(2, 6)``."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


# torch before 2.6 computes the RMS norm of a 16-bit input in 16 bits, where normlab (and later
# torch) computes in float32: there such inputs take normlab's own.
_RMS_NORM_16_BIT_NATIVE = _major_minor(torch.__version__) >= (2, 6)


def can_run(backend: str, op: str, x: torch.Tensor) -> bool:
    """Whether ``backend`` implements ``op`` for tensors like ``x``."""
    if backend == "native":
        if op == "rms_norm" and x.dtype in (torch.float16, torch.bfloat16):
            return _RMS_NORM_16_BIT_NATIVE
        return op in NATIVE_OPS
    if backend == "triton":
        return op in TRITON_OPS and _triton_runs_on(x)
    return backend == "normlab"


def layout(x: torch.Tensor) -> str:
    """"channels_last" when the channels (dim 1) are contiguous in memory, as for 2-D (N, C)."""
    return "channels_last" if x.dim() >= 2 and x.stride(1) == 1 and x.shape[1] > 1 else "channels_first"


def triton_is_faster(op: str, x: torch.Tensor) -> bool:
    """What :data:`TRITON_RULE` says for ``op`` on ``x``."""
    smallest = TRITON_RULE.get((op, layout(x), x.dtype))
    return smallest is not None and x.numel() >= smallest


def _installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked with sys.modules[name] = None
        return False


# The oldest triton the kernels are tested with (the interpreter tests, and compiling for
# sm_80 and sm_90); older ones, such as the 3.0 that torch 2.4 installs, are not used.
MIN_TRITON = (3, 3)


def _triton_version() -> tuple[int, ...] | None:
    """The installed triton's (major, minor), without importing it; None when unknown."""
    for distribution in ("triton", "pytorch-triton", "pytorch-triton-rocm"):  # PyPI's, torch nightlies'
        try:
            return _major_minor(importlib.metadata.version(distribution))
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return None


_TRITON_USABLE = _installed("triton") and (_triton_version() or MIN_TRITON) >= MIN_TRITON


def _triton_runs_on(x: torch.Tensor) -> bool:
    if not (2 <= x.dim() <= 5 and 0 < x.numel() < 2**31 and x.is_floating_point()):
        return False
    if not _TRITON_USABLE:
        return False
    if x.is_cuda:
        return True
    if x.device.type != "cpu":
        return False
    from . import triton_bn  # only a CPU tensor with triton forced gets here

    return triton_bn.INTERPRETED


def choose(op: str, x: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``x``."""
    if _forced is not None and can_run(_forced, op, x):
        return _forced
    if x.is_cuda and can_run("triton", op, x) and triton_is_faster(op, x):
        return "triton"
    return "native" if can_run("native", op, x) else "normlab"
