"""Activations fused with batch norm, and in-place activated batch norm, in torch operations.

``act(z)`` for the activations batch norm can be fused with (the Triton kernels in
``normlab.kernels.triton_bn`` implement the same list; ``normlab.reference`` has them in
float64). ``param`` is the negative slope of ``leaky_relu`` and the ``alpha`` of ``elu``.

:class:`InPlaceABN` is in-place activated batch norm (Rota Bulo, Porzi & Kontschieder,
CVPR 2018) on any device: ``y = act(gamma * x_hat + beta)`` in training mode, saving only
y. Backward inverts the activation, ``z = act^-1(y)``, and recomputes
``x_hat = (z - beta) / gamma``; so BN + activation keeps one tensor for backward (its
output, which the next layer keeps anyway) instead of BN's input as well. That needs an
invertible activation (identity, leaky ReLU with a positive slope, ELU) and a gamma away
from 0, which is why the paper, and :func:`normlab.functional.batch_norm_act`, use
``|weight| + eps`` as gamma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .autograd import accumulation_dtype, affine, centered, mean_square

__all__ = ["ACTIVATIONS", "INVERTIBLE", "DEFAULT_PARAM", "Activation", "activate", "InPlaceABN"]

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "silu", "sigmoid")
INVERTIBLE = ("identity", "leaky_relu", "elu")
DEFAULT_PARAM = {"leaky_relu": 0.01, "elu": 1.0}  # torch.nn's defaults


def activate(z: torch.Tensor, name: str, param: float = 0.0) -> torch.Tensor:
    """``act(z)`` with torch.nn.functional's definitions."""
    if name == "identity":
        return z
    if name == "relu":
        return F.relu(z)
    if name == "leaky_relu":
        return F.leaky_relu(z, param)
    if name == "elu":
        return F.elu(z, param)
    if name == "silu":
        return F.silu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


@dataclass(frozen=True, eq=False)
class Activation:
    """What follows batch norm in :class:`normlab.nn.BatchNormAct`: ``act(y + residual)``.

    The batch-norm step (:func:`normlab.functional.batch_norm_train` and
    :func:`normlab.functional.batch_norm_inference`) takes it as an epilogue, so that a
    backend can fuse it (the Triton kernels do). With ``inplace_abn`` the step is
    in-place activated batch norm: its scale is ``|weight| + eps`` and, in training, only
    the output is kept for backward (:class:`InPlaceABN`).
    """

    name: str = "identity"
    param: float = 0.0  # negative slope of leaky_relu, alpha of elu
    residual: torch.Tensor | None = None
    inplace_abn: bool = False

    @property
    def op(self) -> str:
        """The operation's name in the backend table (:mod:`normlab.backends`)."""
        return "inplace_abn" if self.inplace_abn else "batch_norm_act"

    def scale(self, weight, eps: float):
        """The batch norm's scale: ``|weight| + eps`` for in-place ABN (never 0, so invertible)."""
        return weight.abs() + eps if self.inplace_abn and weight is not None else weight

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return activate(y if self.residual is None else y + self.residual, self.name, self.param)

    def module(self) -> nn.Module:
        """The activation as torch's module (``nn.ReLU()``, ``nn.LeakyReLU(slope)``, ...; ``nn.Identity()``)."""
        return {
            "identity": nn.Identity, "relu": nn.ReLU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
            "leaky_relu": lambda: nn.LeakyReLU(self.param), "elu": lambda: nn.ELU(self.param),
        }[self.name]()


def _invert(y: torch.Tensor, name: str, param: float):
    """``(z, act'(z))`` from ``y = act(z)``, for the invertible activations."""
    if name == "identity":
        return y, torch.ones_like(y)
    positive = y > 0
    if name == "leaky_relu":
        return torch.where(positive, y, y / param), torch.full_like(y, param).masked_fill_(positive, 1.0)
    # elu: y = alpha * (exp(z) - 1) below 0, so z = log1p(y / alpha) and act' = y + alpha;
    # the clamp keeps a y rounded onto -alpha off log(0)
    z = torch.log1p((y.clamp(max=0) / param).clamp(min=-1 + torch.finfo(y.dtype).eps))
    return torch.where(positive, y, z), torch.where(positive, 1.0, y + param)


class InPlaceABN(torch.autograd.Function):
    """``y = act(weight * x_hat + bias)`` over every axis but dim 1, saving only y for backward.

    Arguments of :meth:`forward`: ``x``; ``weight`` (positive: pass ``|gamma| + eps``) and
    ``bias`` shaped to broadcast along dim 1, or None; ``eps``; the activation's ``name``
    and ``param``. Returns ``(y, mean, var)``, the statistics biased and without gradient,
    for the caller's running-statistics update. Backward is once differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, name, param):
        if name not in INVERTIBLE:
            raise ValueError(f"in-place activated batch norm needs an invertible activation {INVERTIBLE}, got {name!r}")
        dims = (0, *range(2, x.dim()))
        x_c, shift, mean_shifted = centered(x.to(accumulation_dtype(x.dtype)), dims, True)
        var = mean_square(x_c, dims=dims)
        inv_std = torch.rsqrt(var + eps)
        y = activate(affine(x_c * inv_std, weight, bias), name, param).to(x.dtype)
        ctx.save_for_backward(y, weight, bias, inv_std)
        ctx.config = (dims, name, param)
        mean = shift + mean_shifted
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        y, weight, bias, inv_std = ctx.saved_tensors
        dims, name, param = ctx.config
        z, slope = _invert(y.to(inv_std.dtype), name, param)
        x_hat = z if bias is None else z - bias
        x_hat = x_hat if weight is None else x_hat / weight
        dz = dy.to(inv_std.dtype) * slope
        m = math.prod([y.shape[d] for d in dims])
        sum_dz = dz.sum(dims, keepdim=True)
        sum_dz_xhat = (dz * x_hat).sum(dims, keepdim=True)
        gain = inv_std if weight is None else weight * inv_std
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = (gain * (dz - (sum_dz + x_hat * sum_dz_xhat) / m)).to(y.dtype)
        if ctx.needs_input_grad[1]:
            dweight = sum_dz_xhat.reshape(weight.shape).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            dbias = sum_dz.reshape(bias.shape).to(bias.dtype)
        return dx, dweight, dbias, None, None, None
