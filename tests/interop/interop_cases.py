"""What the ecosystem tests share.

Each test runs twice, on ``torch.nn``'s own layers and on normlab's: the torch run shows
that the test asks for what torch's layer does (it must pass), the normlab run that
normlab's layer does the same. ``lib`` is the namespace the layers come from:
``lib.BatchNorm2d(4)`` is ``torch.nn.BatchNorm2d(4)`` or ``normlab.BatchNorm2d(4)``; a test
taking ``lib`` is marked ``@BOTH``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
SPATIAL = {1: (7,), 2: (6, 5), 3: (4, 5, 3)}  # small, uneven sizes


# what a test taking ``lib`` runs on
BOTH = pytest.mark.parametrize("lib", [nn, normlab], ids=["torch", "normlab"])


def batch_norm(lib, dim: int, channels: int, **kwargs) -> nn.Module:
    return getattr(lib, f"BatchNorm{dim}d")(channels, **kwargs)


def randomize(model: nn.Module, x: torch.Tensor, steps: int = 3) -> nn.Module:
    """Move every norm's affine parameters and running statistics away from their 1/0 start
    (a freshly built batch norm is the identity map in eval, which would hide a missed fold)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "weight", None), nn.Parameter) and "Norm" in type(m).__name__:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                if getattr(m, "bias", None) is not None:  # RMSNorm has none
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
        training = model.training
        model.train()
        for step in range(steps):
            model(x * (1 + step) + step)
        model.train(training)
    return model


def rand(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def norm_types(model: nn.Module) -> list[type]:
    """The classes of the normalization layers left in ``model``."""
    return [type(m) for m in model.modules() if "Norm" in type(m).__name__]
