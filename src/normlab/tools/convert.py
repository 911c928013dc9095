"""Swap normalization layers between torch.nn and normlab.nn, keeping their state.

Counterparts are paired by class name: every class ``normlab.nn`` exports that
``torch.nn`` also has (``BatchNorm2d`` and ``torch.nn.BatchNorm2d``, ...), so a layer
added to normlab.nn is covered as soon as it is exported. The new layer is built with
the old one's configuration (its constructor arguments read back from its attributes,
as torch.nn stores them) and takes over the old layer's very Parameter and buffer
objects, so an optimizer built on the model keeps working.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..nn._swap import replace_modules
from ._common import label

__all__ = ["convert", "counterparts"]


def counterparts(to: str = "normlab") -> dict[type, type]:
    """``{class converted from: class converted to}`` for ``to="normlab"`` or ``to="torch"``."""
    if to not in ("normlab", "torch"):
        raise ValueError(f"convert: to must be 'normlab' or 'torch', got {to!r}")
    import normlab.nn

    pairs = {}
    for name in normlab.nn.__all__:
        ours, theirs = getattr(normlab.nn, name), getattr(nn, name, None)
        if all(isinstance(c, type) and issubclass(c, nn.Module) for c in (ours, theirs)):
            pairs[theirs] = ours
    return pairs if to == "normlab" else {ours: theirs for theirs, ours in pairs.items()}


def _state_names(m: nn.Module) -> tuple[set[str], set[str]]:
    return (
        {k for k, v in m._parameters.items() if v is not None},
        {k for k, v in m._buffers.items() if v is not None},
    )


def _rebuild(old: nn.Module, cls: type, name: str) -> nn.Module:
    """A ``cls`` with ``old``'s configuration, holding ``old``'s parameters and buffers."""
    signature = inspect.signature(cls.__init__)
    kwargs = {}
    for p in list(signature.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype") or not hasattr(old, p.name):
            continue
        value = getattr(old, p.name)
        if isinstance(value, torch.Tensor) or (value is None and isinstance(p.default, bool)):
            value = value is not None  # e.g. bias=True asks for the bias parameter the attribute holds
        kwargs[p.name] = value
    if "device" in signature.parameters:
        kwargs["device"] = "meta"  # nothing allocated: every tensor is replaced below
    try:
        new = cls(**kwargs)
    except Exception as e:
        raise ValueError(f"convert: cannot build {cls.__module__}.{cls.__name__} like {label(name, old)}: {e}") from e
    if _state_names(new) != _state_names(old):
        raise ValueError(
            f"convert: {label(name, old)} has parameters {sorted(_state_names(old)[0])} and buffers "
            f"{sorted(_state_names(old)[1])}; {cls.__module__}.{cls.__name__} built with the same arguments "
            f"has {sorted(_state_names(new)[0])} and {sorted(_state_names(new)[1])}, so it cannot hold its state"
        )
    for key in new._parameters:
        new._parameters[key] = old._parameters.get(key)
    for key in new._buffers:
        new._buffers[key] = old._buffers.get(key)
    new.train(old.training)
    return new


def convert(model: nn.Module, to: str = "normlab") -> nn.Module:
    """Swap every layer that has a counterpart for it: ``to="normlab"`` or ``to="torch"``.

    Only layers whose class is exactly a paired class are swapped (a subclass may
    change behaviour its counterpart lacks). Parameters and buffers are kept as the
    same objects, so values, device, dtype and ``requires_grad`` stay, and so does the
    training mode; a layer shared by several parents stays shared. Hooks registered on
    the old layers are not carried over. Works in place and returns the model (a new
    object only when the model is itself a swapped layer).
    """
    table = counterparts(to)
    return replace_modules(model, lambda m, name: _rebuild(m, table[type(m)], name) if type(m) in table else None)
