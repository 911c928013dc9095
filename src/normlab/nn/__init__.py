"""normlab's layers, drop-in replacements for their torch.nn counterparts."""

from .activated import BatchNormAct
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
from .factory import create_norm
from .keras import batch_norm_from_keras, from_keras_momentum, to_keras_momentum
from .norms import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm
from .sync import SyncBatchNorm, SyncBatchRenorm, convert_sync_batchnorm
from .weightnorm import MeanOnlyBatchNorm, WeightNorm, data_dependent_init, weight_norm

from . import interop  # noqa: E402, F401  (registers with torch.ao's eager fusion)

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "GhostBatchNorm",
    "FrozenBatchNorm",
    "SyncBatchNorm",
    "SyncBatchRenorm",
    "convert_sync_batchnorm",
    "create_norm",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
    "WeightNorm",
    "weight_norm",
    "data_dependent_init",
    "MeanOnlyBatchNorm",
    "batch_norm_from_keras",
    "from_keras_momentum",
    "to_keras_momentum",
]
