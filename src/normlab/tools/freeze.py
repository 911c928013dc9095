"""Freeze every batch norm of a model for fine-tuning: ``freeze_batchnorm(model)``."""

from __future__ import annotations

from torch import nn

from ..nn._swap import replace_modules
from ..nn.batchnorm import FrozenBatchNorm, _BatchNorm

__all__ = ["freeze_batchnorm"]

_BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, _BatchNorm)  # torch's (with SyncBatchNorm) and normlab's


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every batch norm of ``model`` by a :class:`~normlab.nn.FrozenBatchNorm`, in place.

    Torch's and normlab's batch norms of every kind (BatchNorm1d/2d/3d, SyncBatchNorm,
    BatchRenorm, GhostBatchNorm) become the affine map they compute at inference, with
    their current running statistics, weight and bias held as buffers: nothing of them is
    trained or updated any more, in ``train()`` as in ``eval()``. Returns the model (the
    frozen layer if ``model`` is itself a batch norm). A layer without running statistics
    has nothing to freeze to: such layers are named in a ValueError, raised before anything
    is changed. To stop a layer without replacing it, see ``normlab.nn.BatchNorm2d.freeze``.
    """
    untracked = [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, _BATCH_NORMS) and (m.running_mean is None or m.running_var is None)
    ]
    if untracked:
        raise ValueError(
            "freeze_batchnorm: these batch norms have no running statistics (track_running_stats=False) "
            f"to freeze to: {', '.join(untracked)}; nothing was changed"
        )
    return replace_modules(model, lambda m, _name: FrozenBatchNorm.from_batchnorm(m) if isinstance(m, _BATCH_NORMS) else None)
