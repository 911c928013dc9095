"""Functional API: the normalizations as functions, with torch.nn.functional's signatures.

Each function asks :func:`normlab.kernels.choose` which backend runs it and otherwise
runs normlab's own implementation, :class:`normlab.autograd.Normalize`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels
from .autograd import Normalize, accumulation_dtype, affine

__all__ = ["batch_norm", "update_running_stats"]


def _per_channel(v: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """View a per-channel vector so it broadcasts along dim 1 of an ``ndim`` input."""
    return None if v is None else v.view(1, -1, *[1] * (ndim - 2))


def values_per_channel(input: torch.Tensor) -> int:
    """m: how many values each channel's batch statistics are taken over."""
    return input.numel() // input.shape[1] if input.dim() > 1 and input.shape[1] else 0


def update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place.

    ``var`` is the biased batch variance over ``count`` values; the running variance
    receives the unbiased ``var * count / (count - 1)``.
    """
    with torch.no_grad():
        if running_mean is not None:
            running_mean.lerp_(mean.reshape(-1).to(running_mean.dtype), momentum)
        if running_var is not None:
            unbiased = var.reshape(-1) * (count / max(count - 1, 1))
            running_var.lerp_(unbiased.to(running_var.dtype), momentum)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Batch normalization per channel (dim 1) over every other axis.

    Same signature and semantics as :func:`torch.nn.functional.batch_norm`. In
    training, :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta` with
    the batch mean and biased variance, and the running statistics (when given) are
    updated in place with the unbiased variance. Otherwise
    :math:`y = \gamma (x - \hat\mu) / \sqrt{\hat\sigma^2 + \epsilon} + \beta` with the
    running statistics.
    """
    if training and values_per_channel(input) == 1:
        raise ValueError(
            "batch_norm: training needs more than one value per channel to compute batch "
            f"statistics, got an input of shape {tuple(input.shape)}"
        )
    if eps < 0 or (training and eps == 0):
        raise ValueError(f"batch_norm: eps must be positive, got {eps}")
    if kernels.choose("batch_norm", input) == "native":
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)

    ndim = input.dim()
    weight, bias = _per_channel(weight, ndim), _per_channel(bias, ndim)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: evaluation needs running_mean and running_var")
        x = input.to(accumulation_dtype(input.dtype))
        x_hat = (x - _per_channel(running_mean, ndim)) * _per_channel(torch.rsqrt(running_var + eps), ndim)
        return affine(x_hat, weight, bias).to(input.dtype)
    if input.numel() == 0:  # an empty batch: no statistics, running ones left alone
        return affine(input, weight, bias)
    dims = (0, *range(2, ndim))
    y, mean, var = Normalize.apply(input, weight, bias, dims, eps, True)
    update_running_stats(running_mean, running_var, mean, var, values_per_channel(input), momentum)
    return y
