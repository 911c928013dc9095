"""What the tools share: which modules are batch norms, what the tools ask a layer, how a batch
is fed to a model, and putting a model back as it was.

A *batch norm* here is any module with batch-norm state (``running_mean``,
``running_var``, ``eps``, and optionally ``weight`` and ``bias``) that normalizes each
channel (dim 1) over the batch: a subclass of ``torch.nn``'s ``_BatchNorm`` (torch's
BatchNorm1d/2d/3d and SyncBatchNorm, and every normlab batch-norm layer, which are
instances of them), or a module from elsewhere that keeps the same state without that
base, such as torchvision's ``FrozenBatchNorm2d`` and normlab's ``FrozenBatchNorm``.
Instance norms keep the same state but normalize each sample; they derive from torch's
``_NormBase`` and are not batch norms.

The tools ask a layer what it is rather than testing its type. A normlab layer answers:

    uses_batch_statistics()   whether training mode normalizes with the batch's statistics
    inference_affine()        (scale, shift) of the per-channel map it applies in eval
    after_affine()            the module that follows that map (nn.Identity(), or an activation)
    frozen()                  its fixed inference form, for freeze_batchnorm
    synchronized(group)       its form with statistics over a process group, for convert_sync_batchnorm

For a torch layer (or a foreign one without these methods) the functions here give the
answer torch's own batch norm would, and :func:`plain_batchnorm` tells whether that
answer holds: whether the class computes torch's batch norm and nothing more.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.batchnorm import _NormBase as _TorchNormBase


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch norm in the sense of this module's docstring."""
    if isinstance(module, _TorchBatchNorm):
        return True
    return (
        not isinstance(module, _TorchNormBase)
        and isinstance(getattr(module, "running_mean", None), torch.Tensor)
        and isinstance(getattr(module, "running_var", None), torch.Tensor)
        and isinstance(getattr(module, "eps", None), float)
    )


def plain_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is torch's batch norm itself (BatchNorm1d/2d/3d, SyncBatchNorm, or a subclass
    that keeps torch's forward): one whose answers the tools can work out from its state."""
    forward = type(module).forward
    return type(module) is nn.SyncBatchNorm or (
        isinstance(module, _TorchBatchNorm) and forward is _TorchBatchNorm.forward
    )


def _asked(module: nn.Module, question: str):
    """The layer's own method ``question``, or None."""
    method = getattr(module, question, None)
    return method if callable(method) else None


def uses_batch_statistics(bn: nn.Module) -> bool:
    """Whether the batch norm ``bn`` normalizes with the batch's statistics in training mode:
    not a frozen one (normlab's ``FrozenBatchNorm`` or ``freeze("statistics")``, torchvision's
    ``FrozenBatchNorm2d``), which applies its running statistics whatever the mode."""
    asked = _asked(bn, "uses_batch_statistics")
    return asked() if asked is not None else isinstance(bn, _TorchBatchNorm)


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
    """``(scale, shift)`` in float64 such that the layer in eval computes ``scale * x + shift`` per channel
    (then :func:`after_affine`): the layer's answer, or, for a module without one,
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``."""
    asked = _asked(bn, "inference_affine")
    if asked is not None:
        return asked()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if getattr(bn, "weight", None) is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if getattr(bn, "bias", None) is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def after_affine(bn: nn.Module) -> nn.Module:
    """The module that follows the affine map at inference: the layer's answer, or ``nn.Identity()``."""
    asked = _asked(bn, "after_affine")
    return asked() if asked is not None else nn.Identity()


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
