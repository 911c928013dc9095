"""What the tools share: which modules are batch norms, the map a batch norm applies at
inference, how a batch is fed to a model, and putting a model back as it was.

A *batch norm* here is any module with batch-norm state (``running_mean``,
``running_var``, ``eps``, and optionally ``weight`` and ``bias``) that normalizes each
channel (dim 1) over the batch: a subclass of ``torch.nn``'s or normlab's
``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm and the variants built on them), or a
module from elsewhere that keeps the same state without that base, such as
torchvision's ``FrozenBatchNorm2d``. Instance norms keep the same state but normalize
each sample; they derive from ``_NormBase`` (torch) or ``NormBase`` (normlab) and are
not batch norms.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.batchnorm import _NormBase as _TorchNormBase

from ..nn._base import NormBase
from ..nn.batchnorm import _BatchNorm


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch norm in the sense of this module's docstring."""
    if isinstance(module, (_TorchBatchNorm, _BatchNorm)):
        return True
    return (
        not isinstance(module, (_TorchNormBase, NormBase))
        and isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
        and isinstance(getattr(module, "eps", None), float)
    )


def uses_batch_statistics(bn: nn.Module) -> bool:
    """Whether the batch norm ``bn`` normalizes with the batch's statistics in training mode:
    not a frozen one (normlab's ``FrozenBatchNorm`` or ``freeze("statistics")``, torchvision's
    ``FrozenBatchNorm2d``), which applies its running statistics whatever the mode."""
    if isinstance(bn, _TorchBatchNorm):
        return True
    return isinstance(bn, _BatchNorm) and not bn.frozen_statistics


def has_running_stats(bn: nn.Module) -> bool:
    return bn.running_mean is not None and bn.running_var is not None


def label(name: str, module: nn.Module) -> str:
    """``'layer1.0.bn1 (BatchNorm2d(64))'``: where a layer is and what it is, for messages."""
    size = getattr(module, "num_features", None)
    if size is None and getattr(module, "running_mean", None) is not None:
        size = module.running_mean.numel()
    kind = type(module).__name__ + (f"({size})" if size is not None else "")
    return f"{name or '(model)'} ({kind})"


@torch.no_grad()
def inference_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` in float64 such that the layer in eval computes ``scale * x + shift`` per channel.

    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``.
    """
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if getattr(bn, "weight", None) is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if getattr(bn, "bias", None) is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def run_batch(model: nn.Module, batch, forward=None):
    """Call ``model`` on one batch as ``torch.optim.swa_utils.update_bn`` does.

    A tensor is the input; a list or tuple is ``(inputs, targets, ...)`` and its first
    element is the input, so the batches of a typical DataLoader work as they come. A
    tensor input is moved to the model's device. ``forward(model, batch)``, when given,
    replaces all of this (models with several inputs, dict batches).
    """
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if isinstance(batch, torch.Tensor) and tensor is not None and batch.device != tensor.device:
        batch = batch.to(tensor.device)
    return model(batch)


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Run a block, then put back every buffer's value, every module's training flag and the RNG state.

    Parameters are not copied: run the block under ``torch.no_grad()`` and they do not
    change. Buffers come back as the same tensor objects with their old values, so
    anything holding a reference to them (an optimizer, a hook) stays valid.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [
        (m, name, b, b.detach().clone())
        for m in model.modules()
        for name, b in m._buffers.items()
        if b is not None
    ]
    cuda = sorted({t.device.index or 0 for t in itertools.chain(model.parameters(), model.buffers()) if t.is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for m, name, b, saved in buffers:
                m._buffers[name] = b
                b.copy_(saved)
        for m, training in modes:
            m.training = training
