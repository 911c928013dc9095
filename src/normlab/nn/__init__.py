"""normlab's layers, drop-in replacements for their torch.nn counterparts."""

from .activated import BatchNormAct
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormAct"]
