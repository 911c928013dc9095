"""The lab's models, built from a small spec instead of a class per combination.

``build(ModelSpec(...), sample_shape, classes)`` returns an ``nn.Sequential``:

* ``kind="mlp"``: ``depth`` hidden layers of ``width`` units, each
  ``Linear -> [norm] -> activation`` (or ``Linear -> activation -> norm`` with
  ``placement="after"``), followed by dropout when ``dropout > 0``, then a linear
  classifier. Ioffe & Szegedy's MNIST network (Fig. 1) is
  ``ModelSpec("mlp", 3, 100, "sigmoid")``.
* ``kind="cnn"``: the seed article's network (seed 004): ``depth`` blocks of two
  3-wide convolutions (``width`` channels; ``final_width`` in the last block), each
  followed by [norm] and the activation; every block but the last ends with 2-wide
  max-pooling and dropout; then a linear classifier. Convolutions are 1-D for
  MNIST-1D (samples ``(C, L)``) and 2-D for images (``(C, H, W)``): the data decides.

Normalizations are looked up by name in :data:`NORMS`, one table: adding a layer of
``normlab.nn`` to the lab is one line there (``bn``, ``gn``, ``ln``, ``renorm``,
``ghost``; the constants above the table fix their options). A linear or convolution
followed directly by a normalization has no bias: the normalization's shift replaces it.
``init_scale`` multiplies the default initial weights of every linear and convolution
layer (the classifier too), for sweeps over the initialization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import normlab.nn as nlnn

__all__ = ["ModelSpec", "NORMS", "ACTIVATIONS", "build", "macs"]


def _bn(channels: int, spatial_dims: int) -> nn.Module:
    return (nlnn.BatchNorm1d, nlnn.BatchNorm1d, nlnn.BatchNorm2d, nlnn.BatchNorm3d)[spatial_dims](channels)


_RENORM = (nlnn.BatchRenorm1d, nlnn.BatchRenorm1d, nlnn.BatchRenorm2d, nlnn.BatchRenorm3d)
# The lab's schedule for batch renormalization, in training steps: the paper's (5k steps of
# batch norm, dmax 0 -> 5 by 25k, rmax 1 -> 3 by 40k) scaled by 1/50 for runs of hundreds
# to a few thousand steps (see docs/claims.md, small-batches).
RENORM_SCHEDULE = {"warmup_steps": 100, "dmax_full_at": 500, "rmax_full_at": 800}
GHOST_BATCH = 16  # "ghost": the virtual batch size of ghost batch norm
GN_GROUPS = 4  # "gn": channel groups (Wu & He use 32 for ResNet's 64-2048 channels)

# name -> factory(channels, spatial dims of the activations: 0 for an MLP) -> module, or None
NORMS = {
    "none": None,
    "bn": _bn,
    "gn": lambda c, s: nlnn.GroupNorm(GN_GROUPS, c),
    # layer norm over the features of an MLP layer; in a CNN over (C, *spatial), per-channel affine
    # (Wu & He's LN: group norm with one group)
    "ln": lambda c, s: nlnn.LayerNorm(c) if s == 0 else nlnn.GroupNorm(1, c),
    "renorm": lambda c, s: _RENORM[s](c, **RENORM_SCHEDULE),
    "ghost": lambda c, s: nlnn.GhostBatchNorm(c, virtual_batch_size=GHOST_BATCH),
}

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "mlp"  # "mlp" or "cnn"
    depth: int = 3  # hidden layers (mlp) or blocks (cnn)
    width: int = 100  # units per hidden layer (mlp) or channels per block (cnn)
    activation: str = "sigmoid"  # a key of ACTIVATIONS
    norm: str = "none"  # a key of NORMS
    placement: str = "before"  # the normalization "before" or "after" the activation
    dropout: float = 0.0  # cnn: after each pooling; mlp: after each hidden layer
    final_width: int = 100  # cnn: channels of the last block
    init_scale: float = 1.0  # multiplies the default initial weights of the linear/conv layers

    def __post_init__(self):
        checks = [
            (self.kind in ("mlp", "cnn"), f"kind must be 'mlp' or 'cnn', got {self.kind!r}"),
            (self.depth >= 1 and self.width >= 1, f"depth and width must be positive, got {self.depth}, {self.width}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"),
            (self.norm in NORMS, f"norm must be one of {sorted(NORMS)}, got {self.norm!r}"),
            (self.placement in ("before", "after"), f"placement must be 'before' or 'after', got {self.placement!r}"),
            (0 <= self.dropout < 1, f"dropout must lie in [0, 1), got {self.dropout}"),
            (self.init_scale > 0, f"init_scale must be positive, got {self.init_scale}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ModelSpec: {message}")


def _layer(spec: ModelSpec, make_linear, channels: int, spatial_dims: int) -> list[nn.Module]:
    """linear/conv, then normalization and activation in the spec's order."""
    norm = NORMS[spec.norm]
    linear = make_linear(bias=norm is None or spec.placement == "after")
    act = ACTIVATIONS[spec.activation]()
    if norm is None:
        return [linear, act]
    n = norm(channels, spatial_dims)
    return [linear, n, act] if spec.placement == "before" else [linear, act, n]


def build(spec: ModelSpec, sample_shape: tuple[int, ...], classes: int) -> nn.Sequential:
    """The network ``spec`` describes, for samples of shape ``(C, *spatial)`` and ``classes`` outputs."""
    model = _build(spec, sample_shape, classes)
    if spec.init_scale != 1:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                    m.weight.mul_(spec.init_scale)
    return model


def _build(spec: ModelSpec, sample_shape: tuple[int, ...], classes: int) -> nn.Sequential:
    if spec.kind == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(sample_shape)
        for _ in range(spec.depth):
            layers += _layer(spec, lambda bias, i=features: nn.Linear(i, spec.width, bias=bias), spec.width, 0)
            layers += [nn.Dropout(spec.dropout)] if spec.dropout > 0 else []
            features = spec.width
        return nn.Sequential(*layers, nn.Linear(features, classes))

    spatial = list(sample_shape[1:])
    if len(spatial) not in (1, 2):
        raise ValueError(f"ModelSpec: a cnn needs samples of shape (C, L) or (C, H, W), got {tuple(sample_shape)}")
    conv = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    pool = nn.MaxPool1d if len(spatial) == 1 else nn.MaxPool2d
    layers, channels = [], sample_shape[0]
    for block in range(spec.depth):
        last = block == spec.depth - 1
        out = spec.final_width if last else spec.width
        for _ in range(2):
            make = lambda bias, i=channels: conv(i, out, 3, padding=1, bias=bias)  # noqa: E731
            layers += _layer(spec, make, out, len(spatial))
            channels = out
        if not last:
            if min(spatial) < 2:
                raise ValueError(f"ModelSpec: {spec.depth} blocks pool samples of shape {tuple(sample_shape)} to nothing")
            layers += [pool(2), nn.Dropout(spec.dropout)]
            spatial = [s // 2 for s in spatial]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * math.prod(spatial), classes))


def macs(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward pass through the linear and convolution layers."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += output[0].numel() * module.weight[0].numel()

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
