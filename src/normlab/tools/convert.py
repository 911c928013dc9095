"""Swap normalization layers between torch.nn and normlab.nn, keeping their state.

Counterparts are paired by class name: every class ``normlab.nn`` exports that
``torch.nn`` also has (``BatchNorm2d`` and ``torch.nn.BatchNorm2d``, ...), so a layer
added to normlab.nn is covered as soon as it is exported. The new layer is built with
the old one's configuration (its constructor arguments read back from its attributes,
as torch.nn stores them) and takes over the old layer's very Parameter and buffer
objects, so an optimizer built on the model keeps working.

A few layers from elsewhere that compute what a normlab layer computes are converted
too (:data:`FOREIGN`: torchvision's ``FrozenBatchNorm2d``, timm's ``BatchNormAct2d`` with
a torch activation); every other subclass of a paired torch class (timm's and
torchvision's ``LayerNorm2d``, ...) is left as it is, and a warning names the classes.
A normlab layer set up with an option torch's class lacks (a freeze, ``channel_dim``, a
``one_value_per_channel`` or ``non_finite`` policy other than the default) is asked
which, and stays normlab's when converting to torch, with a warning.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn

from ..nn._base import Layer
from ..nn._swap import replace_modules
from ._common import label

__all__ = ["FOREIGN", "convert", "counterparts"]


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


def _rebuild(old: nn.Module, cls: type, name: str, **given) -> nn.Module:
    """A ``cls`` with ``old``'s configuration (and ``given``), holding ``old``'s parameters and buffers."""
    signature = inspect.signature(cls.__init__)
    kwargs = {}
    for p in list(signature.parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype") or not hasattr(old, p.name):
            continue
        value = getattr(old, p.name)
        if isinstance(value, torch.Tensor) or (value is None and isinstance(p.default, bool)):
            value = value is not None  # e.g. bias=True asks for the bias parameter the attribute holds
        kwargs[p.name] = value
    kwargs.update(given)
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


_TORCH_ACTIVATIONS = {nn.Identity: "identity", nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu",
                      nn.SiLU: "silu", nn.Sigmoid: "sigmoid"}


def _frozen_batchnorm(m: nn.Module, name: str):
    """torchvision's FrozenBatchNorm2d: the same four buffers and eps (its size is theirs: no num_features)."""
    import normlab.nn

    return _rebuild(m, normlab.nn.FrozenBatchNorm, name, num_features=m.weight.shape[0])


def _batchnorm_act(m: nn.Module, name: str):
    """timm's BatchNormAct2d: ``act(drop(batch_norm(x)))``, converted when ``drop`` is nothing and
    ``act`` one of torch's activations that BatchNormAct has; None otherwise."""
    import normlab.nn

    act, drop = getattr(m, "act", None), getattr(m, "drop", None)
    if type(act) not in _TORCH_ACTIVATIONS or type(drop) is not nn.Identity or list(m.children()) != [drop, act]:
        return None
    extra = {"negative_slope": act.negative_slope} if isinstance(act, nn.LeakyReLU) else {}
    extra.update({"alpha": act.alpha} if isinstance(act, nn.ELU) else {})
    return _rebuild(m, normlab.nn.BatchNormAct, name, activation=_TORCH_ACTIVATIONS[type(act)], **extra)


# Classes from elsewhere that convert(to="normlab") converts: (module prefix, class name) -> converter,
# which returns the normlab layer or None where this instance computes something else.
FOREIGN = {
    ("torchvision.", "FrozenBatchNorm2d"): _frozen_batchnorm,
    ("timm.", "BatchNormAct2d"): _batchnorm_act,
}


def _foreign(m: nn.Module):
    for (module, cls), converter in FOREIGN.items():
        if type(m).__module__.startswith(module) and type(m).__name__ == cls:
            return converter
    return None


def convert(model: nn.Module, to: str = "normlab") -> nn.Module:
    """Swap every layer that has a counterpart for it: ``to="normlab"`` or ``to="torch"``.

    Layers whose class is exactly a paired class are swapped, and the few layers from
    elsewhere of :data:`FOREIGN` (towards normlab). A subclass of a paired class may
    change behaviour its counterpart lacks, so it is left, and so is a normlab layer
    using an option torch's layer lacks (towards torch); a warning names what was left.
    Parameters and buffers are kept as the same objects, so values, device, dtype and
    ``requires_grad`` stay, and so does the training mode; a layer used at several
    places is converted once and stays shared. Hooks registered on the old layers are
    not carried over. Works in place and returns the model (a new object only when the
    model is itself a swapped layer).
    """
    table = counterparts(to)
    paired = tuple(table)
    left: dict[str, list[str]] = {}

    def swap(m: nn.Module, name: str):
        cls = table.get(type(m))
        if cls is not None:
            lacking = m._options_torch_lacks() if to == "torch" and hasattr(m, "_options_torch_lacks") else []
            if not lacking:
                return _rebuild(m, cls, name)
            why = f"{type(m).__name__} with {', '.join(lacking)}, which torch's has not"
        elif isinstance(m, Layer):  # normlab's own: already there, or with no torch counterpart
            if to == "normlab":
                return None
            why = f"{type(m).__name__} (torch has no such layer)"
        elif to == "normlab" and _foreign(m) is not None:
            new = _foreign(m)(m, name)
            if new is not None:
                return new
            why = f"{type(m).__module__}.{type(m).__qualname__} set up as no normlab layer is"
        elif isinstance(m, paired):
            why = f"{type(m).__module__}.{type(m).__qualname__}, a subclass of {type(m).__mro__[1].__name__}"
        else:
            return None
        left.setdefault(why, []).append(name or "(model)")
        return None

    model = replace_modules(model, swap)
    if left:
        warnings.warn(
            f"convert(to={to!r}): left {sum(map(len, left.values()))} layer(s) it cannot convert exactly: "
            + "; ".join(f"{why} at {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                        for why, names in left.items()),
            stacklevel=2,
        )
    return model
