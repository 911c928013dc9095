"""normlab: batch normalization and its relatives, done properly on PyTorch.

Layers (``normlab.nn``), their functional forms (``normlab.functional``), the float64
reference they are tested against (``normlab.reference``, which needs only NumPy),
tools around them (``normlab.tools``) and a lab that tests the claims made about batch
normalization (``normlab.lab``).

Names are resolved on first use, so that ``import normlab.reference`` works on a
machine without torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module it lives in
_EXPORTS = {
    "BatchNorm1d": "normlab.nn",
    "BatchNorm2d": "normlab.nn",
    "BatchNorm3d": "normlab.nn",
    "LayerNorm": "normlab.nn",
    "GroupNorm": "normlab.nn",
    "InstanceNorm1d": "normlab.nn",
    "InstanceNorm2d": "normlab.nn",
    "InstanceNorm3d": "normlab.nn",
    "RMSNorm": "normlab.nn",
    "WeightNorm": "normlab.nn",
    "weight_norm": "normlab.nn",
    "data_dependent_init": "normlab.nn",
    "MeanOnlyBatchNorm": "normlab.nn",
    "batch_norm_from_keras": "normlab.nn",
    "from_keras_momentum": "normlab.nn",
    "to_keras_momentum": "normlab.nn",
    "BatchRenorm1d": "normlab.nn",
    "BatchRenorm2d": "normlab.nn",
    "BatchRenorm3d": "normlab.nn",
    "GhostBatchNorm": "normlab.nn",
    "FrozenBatchNorm": "normlab.nn",
    "SyncBatchNorm": "normlab.nn",
    "SyncBatchRenorm": "normlab.nn",
    "convert_sync_batchnorm": "normlab.nn",
    "freeze_batchnorm": "normlab.tools",
    "BatchNormAct": "normlab.nn",
    "get_backend": "normlab.backends",
    "set_backend": "normlab.backends",
    "use_backend": "normlab.backends",
    "summary": "normlab.tools",
    "fold_batchnorm": "normlab.tools",
    "precise_batchnorm": "normlab.tools",
    "adapt_batchnorm": "normlab.tools",
    "convert": "normlab.tools",
    "doctor": "normlab.tools",
    "param_groups": "normlab.tools",
    "create_norm": "normlab.nn",
}
_SUBMODULES = {"autograd", "backends", "functional", "kernels", "nn", "reference", "tools", "lab"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"normlab.{name}")
    else:
        raise AttributeError(f"module 'normlab' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
