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
but the channel axis; the other normalizations only choose other axes: layer norm and
RMS norm the trailing axes, instance norm the spatial axes, group norm the axes of a
view of x that puts each group of channels on an axis of its own.

Two relatives are not of that form and have their own functions further down: mean-only
batch norm (``y = x - mean + beta``, no division) and weight normalization
(``w = g * v / ||v||``, a reparameterization of a weight rather than of activations).

Masked statistics (padded sequences) take the moments over the positions where a mask
is 1 only (m = their number); every position is still normalized, and since only those
positions move the statistics, the two statistics terms of dx apply there only:
``dx = (g - mask * (sum_A(g) + x_hat * sum_A(g * x_hat)) / m) / sqrt(var + eps)``, the sums
over every position. Batch renormalization and ghost batch norm are built on the same
two functions further down.
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
    "layer_norm",
    "rms_norm",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "mean_only_batch_norm_train",
    "mean_only_batch_norm_backward",
    "mean_only_batch_norm_eval",
    "weight_norm",
    "weight_norm_backward",
    "RenormCache",
    "batch_renorm_train",
    "batch_renorm_backward",
    "ghost_batch_norm_train",
    "ghost_batch_norm_backward",
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
    mask: np.ndarray | None = None  # 1 where the statistics look, broadcastable against x


def _axes(axes, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(a % ndim for a in np.atleast_1d(axes)))


def normalize(x, axes, weight=None, bias=None, eps: float = 1e-5, center: bool = True, mask=None):
    """Normalize ``x`` over ``axes`` and apply the affine map; returns ``(y, cache)``.

    ``weight`` and ``bias`` must broadcast against ``x`` (or be None). ``mask`` (or None):
    broadcastable against ``x``, 1 where a value counts towards the statistics; it may
    vary only along ``axes``, so that every group has the same count.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = _axes(axes, x.ndim)
    if mask is None:
        inside = np.ones(x.shape, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        assert all(mask.shape[a] == 1 for a in range(x.ndim) if a not in axes), "mask varies across groups"
        inside = np.broadcast_to(mask, x.shape)
    count = int(inside.sum(axis=axes).flat[0]) if x.size else 0

    def mean(a):
        return np.where(inside, a, 0.0).sum(axis=axes, keepdims=True) / count

    mean_ = mean(x) if center else np.zeros([1] * x.ndim)
    var = mean((x - mean_) ** 2)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean_) * inv_std
    w = None if weight is None else np.asarray(weight, dtype=np.float64)
    y = x_hat if w is None else x_hat * w
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    bias_shape = None if bias is None else np.shape(bias)
    return y, Cache(x_hat, inv_std, w, bias_shape, axes, center, mean_, var, count, mask)


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
    m, inside = cache.count, 1.0 if cache.mask is None else cache.mask
    correction = x_hat * (g * x_hat).sum(axis=axes, keepdims=True) / m
    if center:
        correction = correction + g.sum(axis=axes, keepdims=True) / m
    dx = (g - inside * correction) * inv_std
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


def batch_norm_train(x, weight=None, bias=None, eps: float = 1e-5, channel_axis: int = 1, mask=None):
    """Training-mode batch norm: batch statistics per channel. Returns ``(y, cache)``.

    ``cache.mean`` and ``cache.var`` (biased) are the batch statistics, ``cache.count``
    the number of values per channel, which :func:`update_running_stats` takes.
    ``mask``: shaped like ``x`` without the channel axis, 1 where a value is real, 0 where
    padded; the statistics are then taken over the real values only.
    """
    x = np.asarray(x, dtype=np.float64)
    channel_axis %= x.ndim
    axes = tuple(a for a in range(x.ndim) if a != channel_axis)
    w, b = (_per_channel(p, x.ndim, channel_axis) for p in (weight, bias))
    if mask is not None:
        mask = np.expand_dims(np.asarray(mask, dtype=bool), channel_axis)
    return normalize(x, axes, w, b, eps, mask=mask)


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


# --- layer, RMS, group and instance norm: the same computation over other axes ----------


def _trailing(ndim: int, normalized_shape) -> tuple[int, ...]:
    k = len(np.atleast_1d(normalized_shape))
    return tuple(range(ndim - k, ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Layer norm (Ba et al. 2016): each sample over its trailing ``normalized_shape`` axes.

    ``weight`` and ``bias`` have shape ``normalized_shape``. Returns ``(y, cache)``;
    :func:`normalize_backward` is its backward.
    """
    x = np.asarray(x, dtype=np.float64)
    return normalize(x, _trailing(x.ndim, normalized_shape), weight, bias, eps)


def rms_norm(x, normalized_shape, weight=None, eps: float = 1e-5):
    """RMS norm (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * weight`` over the trailing axes.

    Returns ``(y, cache)``; :func:`normalize_backward` is its backward.
    """
    x = np.asarray(x, dtype=np.float64)
    return normalize(x, _trailing(x.ndim, normalized_shape), weight, None, eps, center=False)


def _group_view(shape, num_groups: int) -> tuple[int, ...]:
    n, c, *spatial = shape
    return (n, num_groups, c // num_groups, *spatial)


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Group norm (Wu & He 2018): each sample's channels in ``num_groups`` groups, each group
    over its channels and the spatial axes.

    Computed as :func:`normalize` of the view ``(N, G, C/G, *spatial)`` over axes 2 and
    up, with the per-channel ``weight`` and ``bias`` viewed as ``(1, G, C/G, 1, ...)``.
    Returns ``(y, cache)``, the cache being that of the view; see :func:`group_norm_backward`.
    """
    x = np.asarray(x, dtype=np.float64)
    view = _group_view(x.shape, num_groups)
    param_view = (1, *view[1:3], *[1] * (x.ndim - 2))
    w, b = (None if p is None else np.reshape(np.asarray(p, np.float64), param_view) for p in (weight, bias))
    y, cache = normalize(x.reshape(view), tuple(range(2, len(view))), w, b, eps)
    return y.reshape(x.shape), cache


def group_norm_backward(dy, cache: Cache):
    """``(dx, dweight, dbias)`` of :func:`group_norm`, parameters as flat per-channel vectors."""
    dy = np.asarray(dy, dtype=np.float64)
    dx, dweight, dbias = normalize_backward(dy.reshape(cache.x_hat.shape), cache)
    flat = (lambda a: None if a is None else a.reshape(-1))
    return dx.reshape(dy.shape), flat(dweight), flat(dbias)


def instance_norm(x, weight=None, bias=None, eps: float = 1e-5):
    """Instance norm (Ulyanov et al. 2016): each sample's each channel over its spatial axes.

    ``weight`` and ``bias`` are per channel. Returns ``(y, cache)``; its backward is
    :func:`batch_norm_backward` (same parameter layout). Running statistics, as torch
    keeps them, are the average over the batch's instances of their means and unbiased
    variances: ``update_running_stats(rm, rv, cache.mean.mean(0), cache.var.mean(0),
    cache.count, momentum, n)`` (the unbiasing factor is the same for every instance).
    At inference with running statistics it is :func:`batch_norm_eval`.
    """
    x = np.asarray(x, dtype=np.float64)
    w, b = (_per_channel(p, x.ndim, 1) for p in (weight, bias))
    return normalize(x, tuple(range(2, x.ndim)), w, b, eps)


# --- mean-only batch norm (Salimans & Kingma 2016, section 4) ---------------------------


def mean_only_batch_norm_train(x, bias=None, channel_axis: int = 1):
    """``y = x - mean_B(x) + beta`` per channel, over every other axis; returns ``(y, mean)``.

    ``mean`` (keepdims) is the batch mean that updates the running mean, as in batch norm.
    """
    x = np.asarray(x, dtype=np.float64)
    channel_axis %= x.ndim
    axes = tuple(a for a in range(x.ndim) if a != channel_axis)
    mean = x.mean(axis=axes, keepdims=True)
    y = x - mean
    b = _per_channel(bias, x.ndim, channel_axis)
    return (y if b is None else y + b), mean


def mean_only_batch_norm_backward(dy, channel_axis: int = 1):
    """``(dx, dbias)`` of :func:`mean_only_batch_norm_train`: ``dx = dy - mean_B(dy)``, ``dbias = sum_B(dy)``."""
    dy = np.asarray(dy, dtype=np.float64)
    channel_axis %= dy.ndim
    axes = tuple(a for a in range(dy.ndim) if a != channel_axis)
    return dy - dy.mean(axis=axes, keepdims=True), dy.sum(axis=axes)


def mean_only_batch_norm_eval(x, running_mean, bias=None, channel_axis: int = 1):
    """Inference: ``y = x - running_mean + beta`` per channel."""
    x = np.asarray(x, dtype=np.float64)
    channel_axis %= x.ndim
    y = x - _per_channel(running_mean, x.ndim, channel_axis)
    b = _per_channel(bias, x.ndim, channel_axis)
    return y if b is None else y + b


# --- weight normalization (Salimans & Kingma 2016) ---------------------------------------


def _norm_axes(ndim: int, dim) -> tuple[int, ...]:
    """Axes ||v|| is taken over: all but ``dim``; all of them for dim None or -1 (torch's convention)."""
    if dim is None or dim == -1:
        return tuple(range(ndim))
    dim %= ndim
    return tuple(a for a in range(ndim) if a != dim)


def weight_norm(v, g, dim=0):
    """``w = g * v / ||v||``, the norm over every axis of v but ``dim`` (over all of them
    when ``dim`` is None or -1, as in torch). ``g`` broadcasts against v: shape 1 on every
    axis but ``dim``, or a scalar.
    """
    v = np.asarray(v, dtype=np.float64)
    norm = np.sqrt((v**2).sum(axis=_norm_axes(v.ndim, dim), keepdims=True))
    return np.asarray(g, dtype=np.float64) * v / norm


def weight_norm_backward(dw, v, g, dim=0):
    """``(dv, dg)`` of :func:`weight_norm`. With ``u = v / ||v||``:
    ``dg = sum(dw * u)`` and ``dv = g / ||v|| * (dw - u * sum(dw * u))``, sums over the norm's axes.
    """
    dw, v, g = (np.asarray(a, dtype=np.float64) for a in (dw, v, g))
    axes = _norm_axes(v.ndim, dim)
    norm = np.sqrt((v**2).sum(axis=axes, keepdims=True))
    u = v / norm
    dw_u = (dw * u).sum(axis=axes, keepdims=True)
    return g / norm * (dw - u * dw_u), dw_u.reshape(g.shape)
# --- batch renormalization (Ioffe 2017) --------------------------------------------------------


class RenormCache(NamedTuple):
    """What :func:`batch_renorm_backward` needs: batch norm's cache and the constants r, d."""

    cache: Cache
    r: np.ndarray  # per channel, keepdims
    d: np.ndarray
    weight: np.ndarray | None


def batch_renorm_train(
    x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5, rmax: float = 3.0,
    dmax: float = 5.0, channel_axis: int = 1, mask=None,
):
    """Training-mode batch renormalization (Ioffe 2017, Alg. 1). Returns ``(y, RenormCache)``.

    ``y = gamma * (x_hat * r + d) + beta`` with x_hat batch norm's,
    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``,
    ``sigma_B = sqrt(var_B + eps)`` (biased batch variance), ``mu`` and
    ``sigma = sqrt(running_var + eps)`` the running statistics before the update.
    """
    x = np.asarray(x, dtype=np.float64)
    _, cache = batch_norm_train(x, None, None, eps, channel_axis, mask)
    mu, var = (_per_channel(v, x.ndim, channel_axis % x.ndim) for v in (running_mean, running_var))
    sigma = np.sqrt(var + eps)
    r = np.clip(np.sqrt(cache.var + eps) / sigma, 1 / rmax, rmax)
    d = np.clip((cache.mean - mu) / sigma, -dmax, dmax)
    w, b = (_per_channel(p, x.ndim, channel_axis % x.ndim) for p in (weight, bias))
    y = cache.x_hat * r + d
    y = y if w is None else y * w
    y = y if b is None else y + b
    return y, RenormCache(cache, r, d, w)


def batch_renorm_backward(dy, rc: RenormCache):
    """``(dx, dgamma, dbeta)`` of :func:`batch_renorm_train`, r and d held constant."""
    dy = np.asarray(dy, dtype=np.float64)
    cache = rc.cache
    # y = (gamma r) x_hat + ...: batch norm's dx with the weight gamma * r
    g_weight = rc.r if rc.weight is None else rc.r * rc.weight
    dx, _, _ = normalize_backward(dy, cache._replace(weight=g_weight))
    axes = cache.axes
    dgamma = None if rc.weight is None else (dy * (cache.x_hat * rc.r + rc.d)).sum(axis=axes)
    return dx, dgamma, dy.sum(axis=axes)


# --- ghost batch norm (Hoffer et al. 2017) -----------------------------------------------------


def ghost_batch_norm_train(x, virtual_batch_size: int, weight=None, bias=None, eps: float = 1e-5, channel_axis: int = 1):
    """Training-mode ghost batch norm: batch norm of each virtual batch of ``virtual_batch_size``
    samples along axis 0 (the last may be smaller). Returns ``(y, caches)``, one cache per
    virtual batch, in order (their mean, var and count feed :func:`update_running_stats`).
    """
    x = np.asarray(x, dtype=np.float64)
    parts = [batch_norm_train(x[i : i + virtual_batch_size], weight, bias, eps, channel_axis)
             for i in range(0, x.shape[0], virtual_batch_size)]
    return np.concatenate([y for y, _ in parts]), [c for _, c in parts]


def ghost_batch_norm_backward(dy, caches):
    """``(dx, dgamma, dbeta)`` of :func:`ghost_batch_norm_train`."""
    dy = np.asarray(dy, dtype=np.float64)
    grads, start = [], 0
    for c in caches:
        stop = start + c.x_hat.shape[0]
        grads.append(batch_norm_backward(dy[start:stop], c))
        start = stop
    dx = np.concatenate([g[0] for g in grads])
    total = (lambda i: None if grads[0][i] is None else sum(g[i] for g in grads))
    return dx, total(1), total(2)

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
