"""normlab's layers, drop-in replacements for their torch.nn counterparts."""

from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    FrozenBatchNorm,
    GhostBatchNorm,
)
from .sync import SyncBatchNorm, SyncBatchRenorm, convert_sync_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FrozenBatchNorm",
    "GhostBatchNorm",
    "SyncBatchNorm",
    "SyncBatchRenorm",
    "convert_sync_batchnorm",
]
