"""Functional API: the normalizations as functions, with torch.nn.functional's signatures.

Each function asks :func:`normlab.kernels.choose` which backend runs it and otherwise
runs normlab's own implementation, :class:`normlab.autograd.Normalize`.
:func:`batch_norm_act` is batch norm followed by an activation (optionally after a
residual add), fused into one kernel on the Triton backend, and in-place activated
batch norm (:class:`normlab.activation.InPlaceABN`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels
from .activation import ACTIVATIONS, DEFAULT_PARAM, INVERTIBLE, InPlaceABN, activate
from .autograd import Normalize, accumulation_dtype, affine

__all__ = ["batch_norm", "batch_norm_act", "update_running_stats"]


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


def _check_batch_norm_args(name: str, input: torch.Tensor, training: bool, eps: float) -> None:
    if training and values_per_channel(input) == 1:
        raise ValueError(
            f"{name}: training needs more than one value per channel to compute batch "
            f"statistics, got an input of shape {tuple(input.shape)}"
        )
    if eps < 0 or (training and eps == 0):
        raise ValueError(f"{name}: eps must be positive, got {eps}")


def _triton(input, running_mean, running_var, weight, bias, training, momentum, eps,
            activation="identity", param=0.0, residual=None, inplace_abn=False):
    """The Triton kernels (``normlab.kernels.triton_ops``), for the backends that chose them."""
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: evaluation needs running_mean and running_var")
    from .kernels import triton_ops

    return triton_ops.batch_norm_act(input, weight, bias, residual, running_mean, running_var, training,
                                     momentum, eps, activation, param, inplace_abn)


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
    _check_batch_norm_args("batch_norm", input, training, eps)
    backend = kernels.choose("batch_norm", input)
    if backend == "native":
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if backend == "triton":
        return _triton(input, running_mean, running_var, weight, bias, training, momentum, eps)

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


def batch_norm_act(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "relu",
    *,
    negative_slope: float = DEFAULT_PARAM["leaky_relu"],
    alpha: float = DEFAULT_PARAM["elu"],
    residual: torch.Tensor | None = None,
    inplace_abn: bool = False,
) -> torch.Tensor:
    r"""``act(batch_norm(input, ...) + residual)``, in one kernel on the Triton backend.

    ``activation`` is one of ``"identity", "relu", "leaky_relu"`` (with
    ``negative_slope``), ``"elu"`` (with ``alpha``), ``"silu", "sigmoid"``; ``residual``
    (optional, the shape of ``input``) is added before it, as at the end of a ResNet block.
    The other arguments are :func:`batch_norm`'s.

    With ``inplace_abn`` this is in-place activated batch norm (Rota Bulo et al. 2018):
    only the output is kept for backward, which recomputes the normalized input from it
    by inverting the activation. That needs an invertible activation (``identity``,
    ``leaky_relu`` with ``negative_slope > 0``, ``elu`` with ``alpha > 0``), no residual,
    and a scale that cannot be 0: the layer's scale is ``|weight| + eps``, as in the paper.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"batch_norm_act: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    param = {"leaky_relu": negative_slope, "elu": alpha}.get(activation, 0.0)
    if residual is not None and residual.shape != input.shape:
        raise ValueError(
            f"batch_norm_act: the residual must have the input's shape {tuple(input.shape)}, "
            f"got {tuple(residual.shape)}"
        )
    if inplace_abn:
        if activation not in INVERTIBLE or (activation in DEFAULT_PARAM and not param > 0):
            raise ValueError(
                "batch_norm_act: in-place activated batch norm recomputes its input from its output, "
                "so it needs an invertible activation: identity, leaky_relu with negative_slope > 0 or "
                f"elu with alpha > 0; got {activation!r} with parameter {param}"
            )
        if residual is not None:
            raise ValueError("batch_norm_act: in-place activated batch norm takes no residual (it could not "
                             "recompute its input from the output)")
        if weight is not None:
            weight = weight.abs() + eps
    _check_batch_norm_args("batch_norm_act", input, training, eps)
    backend = kernels.choose("inplace_abn" if inplace_abn else "batch_norm_act", input)
    if backend == "triton":
        return _triton(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       activation, param, residual, inplace_abn)
    if inplace_abn and training and input.numel() > 0:
        ndim = input.dim()
        y, mean, var = InPlaceABN.apply(input, _per_channel(weight, ndim), _per_channel(bias, ndim), eps,
                                        activation, param)
        update_running_stats(running_mean, running_var, mean, var, values_per_channel(input), momentum)
        return y
    z = batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return activate(z if residual is None else z + residual, activation, param)
