"""normlab's layers, drop-in replacements for their torch.nn counterparts."""

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .keras import batch_norm_from_keras, from_keras_momentum, to_keras_momentum
from .norms import GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm
from .weightnorm import MeanOnlyBatchNorm, WeightNorm, data_dependent_init, weight_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
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
