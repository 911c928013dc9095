"""The "normlab" backend: normlab's own implementation of every operation, on any device.

Every normalization is :class:`normlab.autograd.Normalize` over its own axes: the shifted
two-pass statistics (exact for data of one magnitude), 16-bit inputs computed in float32,
and a hand-derived backward that differentiates again. In-place activated batch norm is
:class:`normlab.activation.InPlaceABN`; mean-only batch norm and weight norm, which do not
divide by a standard deviation, are a few differentiable torch operations.
"""

from __future__ import annotations

import math

import torch

from ..activation import InPlaceABN
from ..autograd import Normalize, Statistics, accumulation_dtype, affine, centered

__all__ = ["IMPLEMENTATIONS", "can_run", "per_channel", "update_running_stats"]


def per_channel(v: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """View a per-channel vector so it broadcasts along dim 1 of an ``ndim`` input."""
    return None if v is None else v.view(1, -1, *[1] * (ndim - 2))


def update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place, for those given.

    ``var`` is the biased batch variance over ``count`` values; the running variance
    receives the unbiased ``var * count / (count - 1)``.
    """
    with torch.no_grad():
        if running_mean is not None:
            running_mean.lerp_(mean.reshape(-1).to(running_mean.dtype), momentum)
        if running_var is not None:
            unbiased = var.reshape(-1) * (count / max(count - 1, 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def _batch_dims(input: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, input.dim()))


def batch_norm_inference(input, mean, var, weight, bias, eps):
    ndim = input.dim()
    x = input.to(accumulation_dtype(input.dtype))
    x_hat = (x - per_channel(mean, ndim)) * per_channel(torch.rsqrt(var + eps), ndim)
    return affine(x_hat, per_channel(weight, ndim), per_channel(bias, ndim)).to(input.dtype)


def batch_norm_statistics(input, statistics, running_mean, running_var, weight, bias, momentum, eps,
                          moments=None, act=None):
    """Training: normalize with the statistics ``statistics`` takes (``moments`` when already
    taken), then ``act``; update the running statistics given."""
    ndim = input.dim()
    weight, bias = per_channel(weight, ndim), per_channel(bias, ndim)
    if act is not None and act.inplace_abn and type(statistics) is Statistics and statistics.mask is None:
        y, mean, var = InPlaceABN.apply(input, weight, bias, eps, act.name, act.param)
    else:
        y, mean, var = Normalize.apply(input, weight, bias, statistics.dims, eps, True, statistics, moments)
        y = y if act is None else act(y)
    update_running_stats(running_mean, running_var, mean, var, statistics.count, momentum)
    return y


def batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, act):
    if not training:
        return act(batch_norm_inference(input, running_mean, running_var, weight, bias, eps))
    statistics = Statistics(input, _batch_dims(input))
    return batch_norm_statistics(input, statistics, running_mean, running_var, weight, bias, momentum, eps, act=act)


def batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps):
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps)
    statistics = Statistics(input, _batch_dims(input))
    return batch_norm_statistics(input, statistics, running_mean, running_var, weight, bias, momentum, eps)


def _trailing_dims(input: torch.Tensor, normalized_shape) -> tuple[int, ...]:
    return tuple(range(input.dim() - len(normalized_shape), input.dim()))


def layer_norm(input, normalized_shape, weight, bias, eps):
    return Normalize.apply(input, weight, bias, _trailing_dims(input, normalized_shape), eps, True)[0]


def rms_norm(input, normalized_shape, weight, eps):
    return Normalize.apply(input, weight, None, _trailing_dims(input, normalized_shape), eps, False)[0]


def group_norm(input, num_groups, weight, bias, eps):
    """The view ``(N, G, C/G, *spatial)`` normalized over axes 2 and up, with the per-channel
    ``weight`` and ``bias`` viewed as ``(1, G, C/G, 1, ...)``."""
    n, c, *spatial = input.shape
    view = (n, num_groups, c // num_groups, *spatial)
    param_view = (1, num_groups, c // num_groups, *[1] * len(spatial))
    weight, bias = (None if p is None else p.view(param_view) for p in (weight, bias))
    y = Normalize.apply(input.reshape(view), weight, bias, tuple(range(2, len(view))), eps, True)[0]
    return y.view(input.shape)


def instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps):
    if not use_input_stats:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps)
    ndim = input.dim()
    y, mean, var = Normalize.apply(input, per_channel(weight, ndim), per_channel(bias, ndim), tuple(range(2, ndim)),
                                   eps, True)
    # torch's rule: the batch's average of each instance's mean and unbiased variance
    update_running_stats(running_mean, running_var, mean.mean(0), var.mean(0), math.prod(input.shape[2:]), momentum)
    return y


def mean_only_batch_norm(input, running_mean, bias, training, momentum):
    ndim = input.dim()
    x = input.to(accumulation_dtype(input.dtype))
    if not training:
        y = x - per_channel(running_mean, ndim)
    else:
        y, shift, mean_shifted = centered(x, _batch_dims(input), True)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_((shift + mean_shifted).reshape(-1).to(running_mean.dtype), momentum)
    return affine(y, None, per_channel(bias, ndim)).to(input.dtype)


def norm_except_dim(v: torch.Tensor, dim: int) -> torch.Tensor:
    """||v|| over every axis but ``dim``, keepdim; over all axes (a scalar) for dim -1.

    This is torch's convention (``torch.norm_except_dim``): -1 does not mean the last axis.
    """
    acc = accumulation_dtype(v.dtype)
    if dim == -1:
        return torch.linalg.vector_norm(v, dtype=acc).to(v.dtype)
    dim %= v.dim()
    dims = tuple(d for d in range(v.dim()) if d != dim)
    return torch.linalg.vector_norm(v, 2, dims, keepdim=True, dtype=acc).to(v.dtype)


def weight_norm(v, g, dim):
    return v * (g / norm_except_dim(v, dim))


IMPLEMENTATIONS = {
    "batch_norm": batch_norm,
    "batch_norm_act": batch_norm_act,
    "inplace_abn": batch_norm_act,
    "batch_norm_statistics": batch_norm_statistics,
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "group_norm": group_norm,
    "instance_norm": instance_norm,
    "mean_only_batch_norm": mean_only_batch_norm,
    "weight_norm": weight_norm,
}


def can_run(op: str, x: torch.Tensor) -> bool:
    return True
