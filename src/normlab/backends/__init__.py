"""Compute backends: a table (operation -> backend -> implementation) and the one place that chooses.

Each backend is a module of this package that maps the operations it implements to
functions of one signature per operation (listed in :data:`OPS`), and says whether it
can run an operation on a given tensor:

    native   PyTorch's own kernels (``torch.nn.functional``), for the operations torch has
    normlab  normlab's own implementation (:mod:`normlab.autograd`): hand-derived backward,
             shifted two-pass statistics, double backward; every operation, any device
    triton   normlab's Triton kernels (:mod:`normlab.kernels`) for batch norm, batch norm
             + activation and in-place activated batch norm, on CUDA tensors (and on CPU
             tensors under ``TRITON_INTERPRET=1``, for tests); opt-in

A new backend is a new module here with ``IMPLEMENTATIONS`` and ``can_run`` (and, if its
kernels keep non-finite updates out of the running statistics themselves,
``SKIPPING_NON_FINITE``: see :data:`SKIPPING`), and its name in :data:`BACKENDS`.

:func:`implementation` is what :mod:`normlab.functional` calls. Unless a backend is
forced, it takes torch's own kernel where torch has the operation (the fastest on the
CPU but for RMSNorm training, see ``docs/performance.md``) and normlab's own otherwise.
The Triton kernels run only when forced, until a GPU measurement says where they win:
:data:`TRITON_RULE` then lists, per operation, layout and dtype, from which input size
the automatic choice takes them (``benchmarks/bench_gpu.py`` prints the table its
measurements imply). Force a backend with :func:`use_backend` (a context manager) or
:func:`set_backend`; a forced backend that cannot run an operation falls back to the
automatic choice for that operation.
"""

from __future__ import annotations

import contextlib
import importlib

import torch

__all__ = ["BACKENDS", "OPS", "SKIPPING", "TRITON_RULE", "can_run", "choose", "get_backend", "implementation",
           "layout", "set_backend", "skipping_implementation", "triton_is_faster", "use_backend"]

BACKENDS = ("native", "normlab", "triton")

# operation -> the signature every backend's implementation of it has
OPS = {
    "batch_norm": "(input, running_mean, running_var, weight, bias, training, momentum, eps) -> y, as "
                  "torch.nn.functional.batch_norm: in training, running statistics given are updated in place",
    "batch_norm_act": "(input, running_mean, running_var, weight, bias, training, momentum, eps, act) -> "
                      "act(batch_norm(...)), act a normlab.activation.Activation",
    "inplace_abn": "the same, for in-place activated batch norm (act.inplace_abn; weight already |w| + eps)",
    "batch_norm_statistics": "(input, statistics, running_mean, running_var, weight, bias, momentum, eps, moments, "
                             "act) -> y, training with the statistics a normlab.autograd.Statistics takes "
                             "(masked, synchronized)",
    "layer_norm": "(input, normalized_shape, weight, bias, eps) -> y",
    "rms_norm": "(input, normalized_shape, weight, eps) -> y",
    "group_norm": "(input, num_groups, weight, bias, eps) -> y",
    "instance_norm": "(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps) -> y",
    "mean_only_batch_norm": "(input, running_mean, bias, training, momentum) -> y",
    "weight_norm": "(v, g, dim) -> w",
}

_modules = {name: importlib.import_module(f"{__name__}.{name}") for name in BACKENDS}

# op -> backend -> implementation
TABLE: dict[str, dict[str, object]] = {
    op: {name: module.IMPLEMENTATIONS[op] for name, module in _modules.items() if op in module.IMPLEMENTATIONS}
    for op in OPS
}

# op -> backend -> an implementation that also keeps, channel by channel, the running statistics
# whose update is not finite as they were (the engine's non_finite="skip"), by itself, without a
# host synchronization: the engine hands it the buffers and puts no guard around it (no copies).
# A backend offers these as SKIPPING_NON_FINITE (only "triton" does: its kernel decides).
SKIPPING: dict[str, dict[str, object]] = {
    op: {name: module.SKIPPING_NON_FINITE[op] for name, module in _modules.items()
         if op in getattr(module, "SKIPPING_NON_FINITE", {})}
    for op in OPS
}

# When the automatic choice takes "triton" for an op on a CUDA tensor: (op, layout, dtype) ->
# the smallest input, in elements, from which it does; absent or None: never. Empty: no GPU
# measurement exists yet, so the kernels run only when forced.
TRITON_RULE: dict[tuple[str, str, torch.dtype], int | None] = {}

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


def can_run(backend: str, op: str, x: torch.Tensor) -> bool:
    """Whether ``backend`` implements ``op`` for tensors like ``x``."""
    return backend in TABLE[op] and _modules[backend].can_run(op, x)


def layout(x: torch.Tensor) -> str:
    """"channels_last" when the channels (dim 1) are contiguous in memory, as for 2-D (N, C)."""
    return "channels_last" if x.dim() >= 2 and x.stride(1) == 1 and x.shape[1] > 1 else "channels_first"


def triton_is_faster(op: str, x: torch.Tensor) -> bool:
    """What :data:`TRITON_RULE` says for ``op`` on ``x``."""
    smallest = TRITON_RULE.get((op, layout(x), x.dtype))
    return smallest is not None and x.numel() >= smallest


def choose(op: str, x: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``x``."""
    if _forced is not None and can_run(_forced, op, x):
        return _forced
    if TRITON_RULE and x.is_cuda and can_run("triton", op, x) and triton_is_faster(op, x):
        return "triton"
    return "native" if can_run("native", op, x) else "normlab"


def skipping_implementation(op: str, x: torch.Tensor):
    """``SKIPPING[op][choose(op, x)]``, or None where the chosen backend has none (the engine then guards)."""
    if _forced is None and not TRITON_RULE:  # the automatic choice, native or normlab: neither has one
        return None
    return SKIPPING[op].get(choose(op, x))


def implementation(op: str, x: torch.Tensor):
    """The function that runs ``op`` on ``x``: ``TABLE[op][choose(op, x)]``."""
    if _forced is None and not TRITON_RULE:  # the automatic choice, on every call: kept short
        impls = TABLE[op]
        native = impls.get("native")
        return native if native is not None and _modules["native"].can_run(op, x) else impls["normlab"]
    return TABLE[op][choose(op, x)]
