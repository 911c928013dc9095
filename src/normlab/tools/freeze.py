"""Freeze every batch norm of a model for fine-tuning: ``freeze_batchnorm(model)``."""

from __future__ import annotations

import warnings

from torch import nn

from ..nn._swap import replace_modules
from ..nn.batchnorm import FrozenBatchNorm
from ._common import is_batchnorm, plain_batchnorm

__all__ = ["freeze_batchnorm"]


def _frozen_form(m: nn.Module):
    """What ``m`` becomes: its own answer (normlab's layers), a FrozenBatchNorm for torch's batch norm,
    or None to leave it (a batch norm class with a forward of its own)."""
    frozen = getattr(m, "frozen", None)
    if callable(frozen):
        return frozen()
    return FrozenBatchNorm.from_batchnorm(m) if plain_batchnorm(m) else None


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every batch norm of ``model`` by its frozen form, in place.

    Torch's and normlab's batch norms of every kind (BatchNorm1d/2d/3d, SyncBatchNorm,
    BatchRenorm, GhostBatchNorm, MeanOnlyBatchNorm) become a
    :class:`~normlab.nn.FrozenBatchNorm`: the affine map they compute at inference, with
    their current running statistics, weight and bias held as buffers, so that nothing
    of them is trained or updated any more, in ``train()`` as in ``eval()``. A
    ``BatchNormAct`` keeps its activation (and in-place ABN its ``|weight| + eps`` scale).
    Each layer says what its frozen form is (its ``frozen()`` method); a torch batch-norm
    subclass with a forward of its own (timm's ``BatchNormAct2d``) cannot be frozen from
    its state alone and is left as it is, with a warning naming it. A layer used at
    several places is frozen once and stays shared. Returns the model (the frozen layer
    if ``model`` is itself a batch norm).

    A layer without running statistics has nothing to freeze to: such layers are named in
    a ValueError, raised before anything is changed. To stop a layer without replacing
    it, see ``normlab.nn.BatchNorm2d.freeze``.
    """
    untracked = [
        name or type(m).__name__
        for name, m in model.named_modules()
        if is_batchnorm(m) and (plain_batchnorm(m) or callable(getattr(m, "frozen", None)))
        and getattr(m, "running_mean", None) is None
    ]
    if untracked:
        raise ValueError(
            "freeze_batchnorm: these batch norms have no running statistics (track_running_stats=False) "
            f"to freeze to: {', '.join(untracked)}; nothing was changed"
        )
    left: dict[str, list[str]] = {}

    def convert(m: nn.Module, name: str):
        if not is_batchnorm(m):
            return None
        new = _frozen_form(m)
        if new is None:
            left.setdefault(type(m).__qualname__, []).append(name or "(model)")
        return None if new is m else new

    model = replace_modules(model, convert)
    if left:
        warnings.warn("freeze_batchnorm: left as they were the batch norms whose class has a forward of its own, "
                      "which a FrozenBatchNorm would not compute: "
                      + "; ".join(f"{cls} at {', '.join(names)}" for cls, names in left.items()), stacklevel=2)
    return model
