"""Normalization layers by name: ``create_norm("BN", 64)``, as timm's ``create_norm_layer``
and detectron2's ``get_norm("SyncBN", 64)`` build them.

Every layer of ``normlab.nn`` is reachable by its class name and by the short names
those libraries use (:data:`ALIASES`); a name is read case-insensitively, with ``_`` and
``-`` ignored, so ``"SyncBN"``, ``"sync_bn"`` and ``"syncbn"`` are one name.
``library="torch"`` builds ``torch.nn``'s layer of the same class name instead, for the
layers torch has.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

__all__ = ["ALIASES", "create_norm", "norm_names"]

# Short names -> (class name, default keyword arguments). "BN" is 2-D, as in timm and detectron2.
ALIASES: dict[str, tuple[str, dict]] = {
    "bn": ("BatchNorm2d", {}),
    "batchnorm": ("BatchNorm2d", {}),
    **{f"bn{d}d": (f"BatchNorm{d}d", {}) for d in (1, 2, 3)},
    "syncbn": ("SyncBatchNorm", {}),
    "nnsyncbn": ("SyncBatchNorm", {}),
    "frozenbn": ("FrozenBatchNorm", {}),
    "frozenbatchnorm2d": ("FrozenBatchNorm", {}),  # torchvision's name
    "gn": ("GroupNorm", {}),
    "groupnorm1": ("GroupNorm", {"num_groups": 1}),  # timm's: one group, statistics over (C, H, W)
    "ln": ("LayerNorm", {}),
    "rms": ("RMSNorm", {}),
    "in": ("InstanceNorm2d", {}),
    "instancenorm": ("InstanceNorm2d", {}),
    **{f"in{d}d": (f"InstanceNorm{d}d", {}) for d in (1, 2, 3)},
    "brn": ("BatchRenorm2d", {}),
    "batchrenorm": ("BatchRenorm2d", {}),
    **{f"brn{d}d": (f"BatchRenorm{d}d", {}) for d in (1, 2, 3)},
    "syncbrn": ("SyncBatchRenorm", {}),
    "gbn": ("GhostBatchNorm", {}),
    "ghostbn": ("GhostBatchNorm", {}),
    "bnact": ("BatchNormAct", {}),
    "meanonlybn": ("MeanOnlyBatchNorm", {}),
}
GROUPS = 32  # GroupNorm's default number of groups, as detectron2's "GN" and timm's GroupNorm
NOT_A_LAYER = {"WeightNorm"}  # a parametrization of a layer's weight: normlab.nn.weight_norm(layer)


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _classes() -> dict[str, str]:
    """Lower-cased class name -> class name, for every normalization layer of normlab.nn."""
    from .. import nn as normlab_nn

    return {
        _key(n): n
        for n in normlab_nn.__all__
        if inspect.isclass(getattr(normlab_nn, n)) and issubclass(getattr(normlab_nn, n), nn.Module) and n not in NOT_A_LAYER
    }


def norm_names() -> list[str]:
    """Every name :func:`create_norm` accepts, in the form it reads them (lower case)."""
    return sorted({*ALIASES, *_classes()})


def create_norm(name: str, num_features: int, *, library: str = "normlab", **kwargs) -> nn.Module:
    """Build the normalization layer called ``name`` over ``num_features`` channels.

    ``name`` is a class name of ``normlab.nn`` (``"BatchNorm2d"``, ``"GroupNorm"``,
    ``"GhostBatchNorm"``, ...) or a short name from :data:`ALIASES` (``"BN"``,
    ``"SyncBN"``, ``"FrozenBN"``, ``"GN"``, ``"LN"``, ``"IN"``, ``"BRN"``, ...),
    case-insensitive. ``kwargs`` go to the layer's constructor. ``num_features`` is
    the first argument of every layer (``normalized_shape`` for LayerNorm and RMSNorm,
    which normalize the last axis) except GroupNorm, where it is ``num_channels`` and
    ``num_groups`` defaults to 32. ``library="torch"`` builds ``torch.nn``'s class of
    the same name instead.

        create_norm("SyncBN", 256, momentum=0.01)      # normlab.nn.SyncBatchNorm(256, momentum=0.01)
        create_norm("GN", 256, library="torch")        # torch.nn.GroupNorm(32, 256)
    """
    if not isinstance(name, str):
        raise TypeError(f"create_norm: name must be a str such as 'BN' or 'GroupNorm', got {type(name).__name__}")
    if library not in ("normlab", "torch"):
        raise ValueError(f"create_norm: library must be 'normlab' or 'torch', got {library!r}")
    classes = _classes()
    key = _key(name)
    if key in ALIASES:
        class_name, defaults = ALIASES[key]
    elif key in classes:
        class_name, defaults = classes[key], {}
    else:
        hint = " (a parametrization of a weight, not a layer: normlab.nn.weight_norm(layer))" if key == "weightnorm" else ""
        raise ValueError(
            f"create_norm: unknown normalization {name!r}{hint}; the names (case-insensitive, '_' and '-' ignored) "
            f"are: {', '.join(norm_names())}"
        )
    if library == "torch":
        cls = getattr(torch.nn, class_name, None)
        if cls is None:
            raise ValueError(f"create_norm: {name!r} is normlab's {class_name}, which torch.nn does not have; use library='normlab'")
    else:
        from .. import nn as normlab_nn

        cls = getattr(normlab_nn, class_name)
    kwargs = {**defaults, **kwargs}
    if class_name == "GroupNorm":
        return cls(kwargs.pop("num_groups", GROUPS), num_features, **kwargs)
    return cls(num_features, **kwargs)
