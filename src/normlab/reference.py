"""Float64 NumPy reference of the normalizations: the oracle every test compares against.

Importable without torch. Written for clarity, not speed. Every normalization here is
one computation over a set of reduction axes A (m = number of values reduced):

    mu    = mean_A(x)                      (0 when not centering, as in RMSNorm)
    var   = mean_A((x - mu)^2)             biased, as in the forward pass of every layer
    x_hat = (x - mu) / sqrt(var + eps)
    y     = gamma * x_hat + beta           gamma, beta broadcast against x

and its backward, derived by hand (g = dy * gamma):

    dx     = (g - mean_A(g) - x_hat * mean_A(g * x_hat)) / sqrt(var + eps)
    dgamma = dy * x_hat summed over the axes gamma is broadcast along
    dbeta  = dy summed over the axes beta is broadcast along

(without centering the ``mean_A(g)`` term drops out). Batch norm reduces over every axis
but the channel axis; the other normalizations only choose other axes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "Cache",
    "normalize",
    "normalize_backward",
    "batch_norm_train",
    "batch_norm_eval",
    "batch_norm_backward",
    "update_running_stats",
    "ACTIVATIONS",
    "activation",
    "activation_grad",
    "activation_inverse",
    "batch_norm_act_train",
    "batch_norm_act_backward",
]


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    x_hat: np.ndarray
    inv_std: np.ndarray  # 1 / sqrt(var + eps), keepdims over the reduced axes
    weight: np.ndarray | None  # broadcastable against x
    bias_shape: tuple[int, ...] | None
    axes: tuple[int, ...]
    center: bool
    mean: np.ndarray  # batch mean, keepdims (zeros when not centering)
    var: np.ndarray  # biased batch variance, keepdims
    count: int  # m, the number of values each statistic is taken over


def _axes(axes, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(a % ndim for a in np.atleast_1d(axes)))


def normalize(x, axes, weight=None, bias=None, eps: float = 1e-5, center: bool = True):
    """Normalize ``x`` over ``axes`` and apply the affine map; returns ``(y, cache)``.

    ``weight`` and ``bias`` must broadcast against ``x`` (or be None).
    """
    x = np.asarray(x, dtype=np.float64)
    axes = _axes(axes, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes]))
    mean = x.mean(axis=axes, keepdims=True) if center else np.zeros([1] * x.ndim)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    w = None if weight is None else np.asarray(weight, dtype=np.float64)
    y = x_hat if w is None else x_hat * w
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    bias_shape = None if bias is None else np.shape(bias)
    return y, Cache(x_hat, inv_std, w, bias_shape, axes, center, mean, var, count)


def _sum_to_shape(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``a`` over the axes along which an array of ``shape`` was broadcast to it."""
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    return a.sum(axis=axes, keepdims=True) if axes else a


def normalize_backward(dy, cache: Cache):
    """Gradients ``(dx, dweight, dbias)`` of :func:`normalize`; None for absent parameters."""
    dy = np.asarray(dy, dtype=np.float64)
    x_hat, inv_std, w, bias_shape, axes, center = cache[:6]
    g = dy if w is None else dy * w
    dx = g - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)
    if center:
        dx = dx - g.mean(axis=axes, keepdims=True)
    dx = dx * inv_std
    dweight = None if w is None else _sum_to_shape(dy * x_hat, w.shape)
    dbias = None if bias_shape is None else _sum_to_shape(dy, bias_shape)
    return dx, dweight, dbias


# --- batch norm: statistics per channel, over every other axis -------------------------


def _per_channel(v, ndim: int, channel_axis: int):
    """View a per-channel vector so it broadcasts along ``channel_axis`` of an ndim array."""
    if v is None:
        return None
    shape = [1] * ndim
    shape[channel_axis] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def batch_norm_train(x, weight=None, bias=None, eps: float = 1e-5, channel_axis: int = 1):
    """Training-mode batch norm: batch statistics per channel. Returns ``(y, cache)``.

    ``cache.mean`` and ``cache.var`` (biased) are the batch statistics, ``cache.count``
    the number of values per channel, which :func:`update_running_stats` takes.
    """
    x = np.asarray(x, dtype=np.float64)
    channel_axis %= x.ndim
    axes = tuple(a for a in range(x.ndim) if a != channel_axis)
    w, b = (_per_channel(p, x.ndim, channel_axis) for p in (weight, bias))
    return normalize(x, axes, w, b, eps)


def batch_norm_backward(dy, cache: Cache):
    """``(dx, dgamma, dbeta)`` of :func:`batch_norm_train`, parameters as flat vectors."""
    dx, dweight, dbias = normalize_backward(dy, cache)
    flat = (lambda a: None if a is None else a.reshape(-1))
    return dx, flat(dweight), flat(dbias)


def batch_norm_eval(
    x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5, channel_axis: int = 1
):
    """Inference-mode batch norm: ``gamma * (x - running_mean) / sqrt(running_var + eps) + beta``."""
    x = np.asarray(x, dtype=np.float64)
    channel_axis %= x.ndim
    mean, var, w, b = (
        _per_channel(v, x.ndim, channel_axis) for v in (running_mean, running_var, weight, bias)
    )
    y = (x - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    return y if b is None else y + b


def update_running_stats(
    running_mean, running_var, batch_mean, batch_var, count: int, momentum, num_batches_tracked: int
):
    """One running-statistics update; returns ``(running_mean, running_var, num_batches_tracked)``.

    ``batch_var`` is the biased batch variance; the running variance receives the
    unbiased ``batch_var * m / (m - 1)``. ``momentum`` is the weight of the new batch
    (PyTorch's convention); ``None`` gives the cumulative average over all batches seen
    (Ioffe & Szegedy 2015, Alg. 2), i.e. a factor of 1 / (batches seen, this one included).
    """
    num_batches_tracked += 1
    factor = 1.0 / num_batches_tracked if momentum is None else momentum
    unbiased = np.ravel(batch_var) * count / (count - 1)
    mean = (1 - factor) * np.asarray(running_mean, np.float64) + factor * np.ravel(batch_mean)
    var = (1 - factor) * np.asarray(running_var, np.float64) + factor * unbiased
    return mean, var, num_batches_tracked


# --- batch norm followed by an activation (fused kernels, in-place activated BN) -------

# name -> parameter's meaning; param is the negative slope of leaky_relu and the alpha of elu
ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "silu", "sigmoid")


def activation(z, name: str, param: float = 0.0):
    """``act(z)`` in float64."""
    z = np.asarray(z, dtype=np.float64)
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, param * z)
    if name == "elu":
        return np.where(z > 0, z, param * np.expm1(np.minimum(z, 0.0)))
    if name == "silu":
        return z / (1 + np.exp(-z))
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def activation_grad(z, name: str, param: float = 0.0):
    """``act'(z)``; at a kink the value torch uses (relu: 0, leaky_relu: slope, elu: alpha)."""
    z = np.asarray(z, dtype=np.float64)
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, param)
    if name == "elu":
        return np.where(z > 0, 1.0, param * np.exp(np.minimum(z, 0.0)))
    s = 1 / (1 + np.exp(-z))
    if name == "silu":
        return s * (1 + z * (1 - s))
    if name == "sigmoid":
        return s * (1 - s)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def activation_inverse(y, name: str, param: float = 0.0):
    """``z`` with ``act(z) = y``, for the invertible activations (identity, leaky_relu with slope > 0, elu)."""
    y = np.asarray(y, dtype=np.float64)
    if name == "identity":
        return y
    if name == "leaky_relu":
        return np.where(y > 0, y, y / param)
    if name == "elu":
        return np.where(y > 0, y, np.log1p(np.minimum(y, 0.0) / param))
    raise ValueError(
        f"activation {name!r} is not invertible; in-place activated batch norm needs identity, leaky_relu or elu"
    )


def batch_norm_act_train(x, weight=None, bias=None, eps: float = 1e-5, name: str = "identity",
                         param: float = 0.0, residual=None):
    """``y = act(batch_norm_train(x) + residual)``; returns ``(y, cache, z)`` with z the activation's input."""
    z, cache = batch_norm_train(x, weight, bias, eps)
    if residual is not None:
        z = z + np.asarray(residual, dtype=np.float64)
    return activation(z, name, param), cache, z


def batch_norm_act_backward(dy, cache: Cache, z, name: str = "identity", param: float = 0.0):
    """``(dx, dgamma, dbeta, dresidual)`` of :func:`batch_norm_act_train`: ``dz = dy * act'(z)``, then batch norm's."""
    dz = np.asarray(dy, dtype=np.float64) * activation_grad(z, name, param)
    return (*batch_norm_backward(dz, cache), dz)
