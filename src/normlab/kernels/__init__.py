"""Compute backends, and the one place that chooses among them.

Backends:
    "native"   PyTorch's own kernels (``torch.nn.functional``), for the operations torch has.
    "normlab"  normlab's own implementation (:mod:`normlab.autograd`): hand-derived
               backward, shifted two-pass statistics; runs every operation on any device.

:func:`choose` is consulted by every function in :mod:`normlab.functional`. Unless a
backend is forced, it picks the fastest one that can run the operation, which on the
CPU is torch's own kernel where torch has one (see ``docs/performance.md`` for the
measurements behind that rule). Force one with :func:`use_backend` (a context
manager) or :func:`set_backend`; a forced backend that cannot run an operation falls
back to this rule for that operation.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

__all__ = ["BACKENDS", "NATIVE_OPS", "choose", "get_backend", "set_backend", "use_backend"]

BACKENDS = ("native", "normlab")

# Operations torch implements with the same semantics as normlab's (in torch.nn.functional;
# weight_norm is torch._weight_norm, what torch.nn.utils.parametrizations.weight_norm runs).
NATIVE_OPS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "weight_norm"})

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("normlab_backend", default=None)


def _check_name(name: str | None) -> None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown normlab backend {name!r}; expected one of {BACKENDS} or None")


def set_backend(name: str | None) -> None:
    """Force ``name`` for every later call in this context; None restores the automatic choice."""
    _check_name(name)
    _forced.set(name)


def get_backend() -> str | None:
    """The forced backend, or None when the choice is automatic."""
    return _forced.get()


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force ``name`` inside a ``with`` block::

    with normlab.use_backend("normlab"):
        y = bn(x)  # runs normlab's own implementation
    """
    _check_name(name)
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def can_run(backend: str, op: str, x: torch.Tensor) -> bool:
    """Whether ``backend`` implements ``op`` for tensors like ``x``."""
    if backend == "native":
        return op in NATIVE_OPS
    return backend == "normlab"


def choose(op: str, x: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``x``."""
    forced = _forced.get()
    if forced is not None and can_run(forced, op, x):
        return forced
    return "native" if can_run("native", op, x) else "normlab"
