"""The "native" backend: PyTorch's own kernels, for the operations torch has with normlab's semantics.

Batch norm + activation is torch's batch norm followed by the activation (two kernels);
in-place activated batch norm, masked or synchronized statistics and mean-only batch norm
have no torch kernel and are left to normlab's own backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IMPLEMENTATIONS", "can_run"]

# torch before 2.6 computes the RMS norm of a 16-bit input in 16 bits, where normlab (and later
# torch) computes in float32: there such inputs take normlab's own.
RMS_NORM_16_BIT_NATIVE = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 6)


def batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, act):
    return act(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps))


class _FusedWeightNorm(torch.autograd.Function):
    """torch's fused weight norm (``torch._weight_norm_interface``) with a correct second derivative.

    torch's own double backward of it is wrong (gradgradcheck fails, torch 2.13 on the CPU):
    the first backward is torch's kernel, a second one differentiates the composite
    ``v * (g / ||v||)`` instead.
    """

    @staticmethod
    def forward(ctx, v, g, dim):
        w, norms = torch._weight_norm_interface(v, g, dim)
        ctx.save_for_backward(v, g, norms)
        ctx.dim = dim
        return w

    @staticmethod
    def backward(ctx, dw):
        v, g, norms = ctx.saved_tensors
        if not torch.is_grad_enabled():
            dv, dg = torch.ops.aten._weight_norm_interface_backward(dw.contiguous(), v, g, norms, ctx.dim)
            return dv, dg, None
        wanted = [t for t, need in zip((v, g), ctx.needs_input_grad) if need]
        w = v * (g / torch.norm_except_dim(v, 2, ctx.dim))
        grads = iter(torch.autograd.grad(w, wanted, dw, create_graph=True))
        return (*(next(grads) if need else None for need in ctx.needs_input_grad[:2]), None)


def weight_norm(v, g, dim):
    """What ``torch.nn.utils.parametrizations.weight_norm`` runs (``torch._weight_norm``), whose
    fused path (``dim`` the first or last axis) gets a correct second derivative."""
    if dim in (0, v.dim() - 1) and v.dim() > 0:
        return _FusedWeightNorm.apply(v, g, dim)
    return torch._weight_norm(v, g, dim)


IMPLEMENTATIONS = {
    "batch_norm": F.batch_norm,
    "batch_norm_act": batch_norm_act,
    "layer_norm": F.layer_norm,
    "rms_norm": F.rms_norm,
    "group_norm": F.group_norm,
    "instance_norm": F.instance_norm,
    "weight_norm": weight_norm,
}


def can_run(op: str, x: torch.Tensor) -> bool:
    if op == "rms_norm" and x.dtype in (torch.float16, torch.bfloat16):
        return RMS_NORM_16_BIT_NATIVE
    return True
