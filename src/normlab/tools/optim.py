"""Parameter groups for torch.optim: weight decay on the weights, none on norms and biases.

``torch.optim.AdamW(normlab.param_groups(model, weight_decay=0.05), lr=1e-3)`` puts
the weight and bias of every normalization layer, and every bias, in a group without
weight decay, as He et al. 2019 ("Bag of tricks for image classification with
convolutional neural networks", section 3.1, "no bias decay") and timm's recipes do.
What decay is meant to regularize are the weights of convolutions and linear layers;
on a norm's gamma it shrinks the scale of the norm's output instead.
"""

from __future__ import annotations

from torch import nn

from ._common import is_batchnorm

__all__ = ["norm_parameters", "param_groups"]


def _norm_types() -> tuple[type, ...]:
    """torch's normalization layers and every layer of ``normlab.nn`` (timm's and others' subclass these)."""
    from .. import nn as normlab_nn

    torch_norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    torch_norms += (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
    ours = tuple(
        cls for cls in map(normlab_nn.__dict__.get, normlab_nn.__all__) if isinstance(cls, type) and issubclass(cls, nn.Module)
    )
    return torch_norms + ours


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer: torch's, normlab's, a subclass of one, or a batch norm by its state."""
    return isinstance(module, _norm_types()) or is_batchnorm(module)


def norm_parameters(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> qualified name of its layer`` for the parameters of every normalization layer of ``model``."""
    return {
        id(p): name or "(model)"
        for name, m in model.named_modules()
        if is_norm(m)
        for p in m.parameters(recurse=False)
    }


def param_groups(model: nn.Module, weight_decay: float, **options) -> list[dict]:
    """Split ``model``'s parameters into two groups for a torch optimizer: with and without weight decay.

    The second group, with ``weight_decay=0.0``, holds the parameters of every
    normalization layer (torch's batch, instance, layer, group and RMS norms, every
    normlab layer, and subclasses of these such as timm's) and every bias (a
    parameter named ``bias`` or ``*_bias``, such as attention's ``in_proj_bias``);
    the first, with ``weight_decay``, all the others. Every parameter is in exactly
    one group, once, in ``model.parameters()`` order; frozen ones are included (an
    optimizer skips a parameter without a gradient). ``options`` (``lr=...``) go into
    both groups. Either group may be empty.

        optimizer = torch.optim.SGD(normlab.param_groups(model, weight_decay=5e-4), lr=0.1, momentum=0.9)
    """
    if not weight_decay >= 0:
        raise ValueError(f"param_groups: weight_decay must be non-negative, got {weight_decay}")
    exempt = set(norm_parameters(model))
    for m in model.modules():
        exempt.update(id(p) for name, p in m.named_parameters(recurse=False) if name == "bias" or name.endswith("_bias"))
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if id(p) in exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, **options},
        {"params": no_decay, "weight_decay": 0.0, **options},
    ]
