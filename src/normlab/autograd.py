"""The autograd Function every normlab normalization runs on, with a hand-derived backward.

A normalization is fixed by the axes its statistics are taken over (the math is in
``normlab.reference``): batch norm reduces over every axis but the channel axis, layer
norm over the trailing axes, instance norm over the spatial axes; group norm is
instance norm of a view of x that puts each group of channels on an axis of its own.
:class:`Normalize` takes ``x``, those axes, and ``weight`` and ``bias`` broadcastable
against ``x``, so that one forward and one backward serve every layer.

Statistics are stable: the shifted-data two-pass algorithm subtracts, per group, one of
the group's own values before anything is summed (exact in floating point for data of
one magnitude), then takes the mean and the mean of squared deviations. Half-precision
inputs are computed in float32. ``E[x^2] - E[x]^2`` is never used.

The backward is written in torch operations on the saved input, so that a second
backward (``create_graph=True``) differentiates it like any other graph; in that case
the statistics are rebuilt from the input so that they too are functions of it.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Normalize", "accumulation_dtype", "affine"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float32 for 16-bit floats, else the input's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def affine(x_hat: torch.Tensor, weight, bias) -> torch.Tensor:
    """``weight * x_hat + bias``, either of them possibly None."""
    if weight is not None:
        return x_hat * weight if bias is None else torch.addcmul(bias, x_hat, weight)
    return x_hat if bias is None else x_hat + bias


def _first_of_group(x: torch.Tensor, dims) -> torch.Tensor:
    for d in dims:
        x = x.narrow(d, 0, 1)
    return x.contiguous()


def centered(x: torch.Tensor, dims, center: bool):
    """``(x - mean, shift, mean - shift)`` over ``dims`` by the shifted-data algorithm.

    ``shift`` is the first value of each group; keeping ``mean - shift`` apart from it
    keeps ``x - mean`` exact to the last bit of the small part. Without centering
    (RMSNorm) x is returned as it is, with None for the two statistics.
    """
    if not center:
        return x, None, None
    shift = _first_of_group(x.detach(), dims)
    shifted = x - shift
    mean_shifted = shifted.mean(dims, keepdim=True)
    return shifted - mean_shifted, shift, mean_shifted


def _weight_is_constant_over(weight, dims, ndim: int) -> bool:
    """True when ``weight`` (broadcast against an ndim input) does not vary along ``dims``."""
    if weight is None:
        return True
    shape = (1,) * (ndim - weight.dim()) + tuple(weight.shape)
    return all(shape[d] == 1 for d in dims)


class Normalize(torch.autograd.Function):
    """``y = weight * (x - mean) / sqrt(var + eps) + bias``, statistics over ``dims`` of ``x``.

    Arguments of :meth:`forward`: the input ``x``; ``weight`` and ``bias`` broadcastable
    against it, or None; the reduced axes ``dims`` (non-negative); ``eps``; and
    ``center`` (False for RMSNorm, which only rescales by the root mean square).

    Returns ``(y, mean, var)``: the output and the biased statistics (keepdim), which
    carry no gradient; callers update running statistics from them.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dims, eps, center):
        xa = x.to(accumulation_dtype(x.dtype))
        x_c, shift, mean_shifted = centered(xa, dims, center)
        var = x_c.square().mean(dims, keepdim=True)
        inv_std = torch.rsqrt(var + eps)
        y = affine(x_c * inv_std, weight, bias)
        mean = shift + mean_shifted if center else torch.zeros_like(var)
        ctx.save_for_backward(x, weight, mean_shifted, inv_std)
        ctx.config = (dims, eps, center)
        ctx.bias_like = None if bias is None else (bias.shape, bias.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, mean_shifted, inv_std = ctx.saved_tensors
        dims, eps, center = ctx.config
        xa = x.to(accumulation_dtype(x.dtype))
        if torch.is_grad_enabled():  # double backward: the statistics must depend on x
            x_c = centered(xa, dims, center)[0]
            inv_std = torch.rsqrt(x_c.square().mean(dims, keepdim=True) + eps)
        else:
            x_c = xa - _first_of_group(xa, dims) - mean_shifted if center else xa
        x_hat = x_c * inv_std
        dy = dy.to(x_hat.dtype)
        m = math.prod(x.shape[d] for d in dims)
        # dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)) with g = dy * weight; where
        # the weight is constant over the reduced axes it factors out of the means.
        constant = _weight_is_constant_over(weight, dims, x.dim())
        g = dy if constant else dy * weight
        gain = inv_std if weight is None or not constant else weight * inv_std
        sum_g_xhat = (g * x_hat).sum(dims, keepdim=True)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = x_hat * (-gain * sum_g_xhat / m)
            if center:
                dx = dx - gain * g.sum(dims, keepdim=True) / m
            dx = torch.addcmul(dx, g, gain).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = (sum_g_xhat if constant else dy * x_hat).sum_to_size(weight.shape)
            dweight = dweight.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_like
            dbias = dy.sum_to_size(shape).to(dtype)
        return dx, dweight, dbias, None, None, None
