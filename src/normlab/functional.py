"""Functional API: the normalizations as functions, with torch.nn.functional's signatures.

Each function asks :func:`normlab.kernels.choose` which backend runs it and otherwise
runs normlab's own implementation, :class:`normlab.autograd.Normalize` (or, for
mean-only batch norm and weight norm, which do not divide by a standard deviation,
a few differentiable torch operations). Checks that guard against a silent wrong
answer run before the choice, so that both backends refuse the same inputs.

The batch-norm family shares one training step, :func:`batch_normalize`: given how
the batch statistics are taken (a :class:`normlab.autograd.Statistics`: over the
batch, over its unpadded positions, or across processes), it normalizes, applies
batch renormalization's correction when asked, and updates the running statistics.

:func:`batch_norm_act` is batch norm followed by an activation (after an optional residual
add): the same step with an epilogue, fused into one kernel on the Triton backend, or
in-place activated batch norm (:class:`normlab.activation.InPlaceABN`).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from . import kernels
from .activation import ACTIVATIONS, DEFAULT_PARAM, INVERTIBLE, Activation, InPlaceABN
from .autograd import Normalize, Statistics, accumulation_dtype, affine, centered

__all__ = [
    "batch_norm",
    "batch_norm_act",
    "batch_norm_inference",
    "batch_normalize",
    "batch_renorm",
    "ghost_batch_norm",
    "update_running_stats",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "mean_only_batch_norm",
    "weight_norm",
]


def _per_channel(v: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """View a per-channel vector so it broadcasts along dim 1 of an ``ndim`` input."""
    return None if v is None else v.view(1, -1, *[1] * (ndim - 2))


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


def values_per_channel(input: torch.Tensor) -> int:
    """m: how many values each channel's batch statistics are taken over."""
    return input.numel() // input.shape[1] if input.dim() > 1 and input.shape[1] else 0


def batch_dims(input: torch.Tensor) -> tuple[int, ...]:
    """The axes batch statistics are taken over: every axis but the channel axis, dim 1."""
    return (0, *range(2, input.dim()))


def batch_mask(input: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """Check a padding mask for ``input`` and view it as ``(N, 1, *spatial)``; None stays None.

    ``mask`` is a bool tensor shaped like the input without its channel axis (``(N, L)``
    for an ``(N, C, L)`` sequence batch), True where a value is real, False where padded.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool mask (True where a value is real), got {got}; e.g. mask.bool()")
    expected = (input.shape[0], *input.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"{name}: expected a mask of shape {expected} (the input's shape without its channel "
            f"axis), got {tuple(mask.shape)} for an input of shape {tuple(input.shape)}"
        )
    if mask.device != input.device:
        raise ValueError(f"{name}: the mask is on {mask.device}, the input on {input.device}")
    return mask.unsqueeze(1)


def too_few_values(statistics: Statistics, input: torch.Tensor) -> bool:
    """Whether a training batch gives fewer than two values per channel (an empty batch does not count)."""
    return statistics.count == 1 or (statistics.count == 0 and input.numel() > 0)


def _refuse_too_few_values(statistics: Statistics, input: torch.Tensor, name: str) -> None:
    if too_few_values(statistics, input):
        where = "" if statistics.mask is None else f" and {statistics.count} unmasked value(s) per channel"
        raise ValueError(
            f"{name}: training needs more than one value per channel to compute batch "
            f"statistics, got an input of shape {tuple(input.shape)}{where}"
        )


def _check_eps(eps: float, training: bool, name: str) -> None:
    """eps may be 0 only when the statistics are given (inference): a batch's variance can be 0."""
    if eps < 0 or (training and eps == 0):
        raise ValueError(f"{name}: eps must be positive, got {eps}")


def _backend(input: torch.Tensor, act: Activation | None) -> str:
    """Which backend runs a batch-norm step, followed by ``act`` if given.

    A fused operation goes to Triton when that is chosen for it; in-place ABN otherwise
    runs normlab's :class:`InPlaceABN`; batch norm + activation otherwise runs whatever
    runs batch norm, then the activation.
    """
    if act is not None:
        fused = kernels.choose(act.op, input)
        if fused == "triton" or act.inplace_abn:
            return fused
    return kernels.choose("batch_norm", input)


def _triton(input, running_mean, running_var, weight, bias, training, momentum, eps, act) -> torch.Tensor:
    """The Triton kernels (``normlab.kernels.triton_ops``), for the steps that chose them."""
    from .kernels import triton_ops

    act = act or Activation()
    return triton_ops.batch_norm_act(input, weight, bias, act.residual, running_mean, running_var, training,
                                     momentum, eps, act.name, act.param, act.inplace_abn)


def batch_norm_inference(input, mean, var, weight, bias, eps, act: Activation | None = None) -> torch.Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` with given per-channel statistics, then ``act``."""
    if mean is None or var is None:
        raise ValueError("batch_norm: evaluation needs running_mean and running_var")
    weight = weight if act is None else act.scale(weight, eps)
    backend = _backend(input, act)
    if backend == "triton":
        return _triton(input, mean, var, weight, bias, False, 0.0, eps, act)
    if backend == "native":
        y = F.batch_norm(input, mean, var, weight, bias, False, 0.0, eps)
    else:
        ndim = input.dim()
        x = input.to(accumulation_dtype(input.dtype))
        x_hat = (x - _per_channel(mean, ndim)) * _per_channel(torch.rsqrt(var + eps), ndim)
        y = affine(x_hat, _per_channel(weight, ndim), _per_channel(bias, ndim)).to(input.dtype)
    return y if act is None else act(y)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Batch normalization per channel (dim 1) over every other axis.

    Same signature and semantics as :func:`torch.nn.functional.batch_norm`. In
    training, :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta` with
    the batch mean and biased variance, and the running statistics (when given) are
    updated in place with the unbiased variance. Otherwise
    :math:`y = \gamma (x - \hat\mu) / \sqrt{\hat\sigma^2 + \epsilon} + \beta` with the
    running statistics.

    ``mask`` (normlab's addition): a bool tensor shaped like the input without dim 1,
    False at padded positions, which the batch statistics then leave out; see
    :func:`batch_mask`.
    """
    return _batch_norm_call("batch_norm", input, running_mean, running_var, weight, bias, training, momentum, eps, mask)


def _batch_norm_call(who, input, running_mean, running_var, weight, bias, training, momentum, eps, mask,
                     rmax=1.0, dmax=0.0) -> torch.Tensor:
    """What :func:`batch_norm` and :func:`batch_renorm` do once their own arguments are checked."""
    mask = batch_mask(input, mask, who)
    _check_eps(eps, training, who)
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps)
    statistics = Statistics(input, batch_dims(input), mask)
    _refuse_too_few_values(statistics, input, who)
    return batch_normalize(input, statistics, running_mean, running_var, weight, bias, momentum, eps, rmax, dmax)


def batch_renorm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    rmax: float = 3.0,
    dmax: float = 5.0,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Batch renormalization (Ioffe 2017): batch norm corrected towards the running statistics.

    Training: :math:`y = \gamma (\hat x\, r + d) + \beta` with :math:`\hat x` batch norm's,
    :math:`r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma)` and
    :math:`d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mu) / \sigma)`, constants in the
    backward pass, where :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}` (biased batch
    variance) and :math:`\mu`, :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}` are the
    running statistics before this step updates them, as batch norm does. Evaluation:
    batch norm with the running statistics. ``rmax=1, dmax=0`` is batch norm.
    """
    if rmax < 1 or dmax < 0:
        raise ValueError(f"batch_renorm: needs rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
    if training and (running_mean is None or running_var is None):
        raise ValueError("batch_renorm: training needs running_mean and running_var: r and d compare the batch statistics with them")
    return _batch_norm_call("batch_renorm", input, running_mean, running_var, weight, bias, training, momentum, eps,
                            mask, rmax, dmax)


def ghost_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ghost batch normalization (Hoffer et al. 2017): :func:`batch_norm` of each virtual batch.

    In training the input is split along dim 0 into virtual batches of
    ``virtual_batch_size`` samples (the last may be smaller), each normalized with its own
    statistics and each updating the running statistics in turn, as batch norm would if
    it saw them one after another. Evaluation: batch norm with the running statistics.
    """
    if not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
        raise ValueError(f"ghost_batch_norm: virtual_batch_size must be a positive int, got {virtual_batch_size!r}")
    if not training:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps, mask=mask)
    masks = [None] * input.shape[0] if mask is None else mask.split(virtual_batch_size)
    return torch.cat([
        batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps, mask=m)
        for x, m in zip(input.split(virtual_batch_size), masks)
    ])


def batch_normalize(
    input: torch.Tensor,
    statistics: Statistics,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float,
    eps: float,
    rmax: float = 1.0,
    dmax: float = 0.0,
    act: Activation | None = None,
) -> torch.Tensor:
    """One training step of batch normalization, with the batch statistics ``statistics`` takes.

    The step every batch-norm layer and function shares. ``rmax`` and ``dmax`` other than
    1 and 0 make it batch renormalization (see :func:`batch_renorm`), which reads the
    running statistics: r and d, from the statistics taken first, turn into the weight
    and bias of a batch norm. The running statistics, when given, are updated with
    ``momentum`` (0 leaves them as they are). Callers check that the statistics span
    more than one value (:func:`too_few_values`). Local statistics of a whole batch can
    run on torch's kernel (:func:`normlab.kernels.choose` decides); masked and
    synchronized ones run on :class:`normlab.autograd.Normalize`. ``act``, when given, is
    applied to the output (:class:`normlab.nn.BatchNormAct`), fused where a backend can.
    """
    update = momentum != 0 and running_mean is not None and running_var is not None
    finish = (lambda y: y) if act is None else act
    weight = weight if act is None else act.scale(weight, eps)
    if statistics.count == 0:  # an empty batch: no statistics, running ones left alone
        return finish(affine(input, _per_channel(weight, input.dim()), _per_channel(bias, input.dim())))
    moments = None
    if rmax != 1 or dmax != 0:  # batch renormalization
        with torch.no_grad():
            _, moments = statistics.centered(input.to(accumulation_dtype(input.dtype)))
            sigma = torch.sqrt(running_var + eps)
            r = (torch.sqrt(moments.var.reshape(-1) + eps) / sigma).clamp(1 / rmax, rmax)
            d = (((moments.shift + moments.mean_shifted).reshape(-1) - running_mean) / sigma).clamp(-dmax, dmax)
        # gamma * (x_hat * r + d) + beta is batch norm with weight gamma * r and bias gamma * d + beta
        weight, bias = affine(r, weight, None), affine(d, weight, bias)
    local = type(statistics) is Statistics and statistics.mask is None and statistics.count > 1
    backend = _backend(input, act) if local else "normlab"
    if backend in ("native", "triton"):
        running_mean, running_var = (running_mean, running_var) if update else (None, None)
        if backend == "triton":
            return _triton(input, running_mean, running_var, weight, bias, True, momentum, eps, act)
        return finish(F.batch_norm(input, running_mean, running_var, weight, bias, True, momentum, eps))
    ndim = input.dim()
    weight, bias = _per_channel(weight, ndim), _per_channel(bias, ndim)
    if act is not None and act.inplace_abn and local:
        y, mean, var = InPlaceABN.apply(input, weight, bias, eps, act.name, act.param)
    else:
        y, mean, var = Normalize.apply(input, weight, bias, statistics.dims, eps, True, statistics, moments)
        y = finish(y)
    if update:
        update_running_stats(running_mean, running_var, mean, var, statistics.count, momentum)
    return y


# --- layer, group, instance and RMS norm: Normalize over other axes -----------------------


def check_normalized_shape(input: torch.Tensor, normalized_shape: tuple[int, ...], who: str) -> None:
    """Raise unless ``input`` ends in ``normalized_shape`` (layer norm and RMS norm)."""
    k = len(normalized_shape)
    if input.dim() < k or tuple(input.shape[input.dim() - k :]) != normalized_shape:
        raise ValueError(
            f"{who}: expected an input whose last {k} dim(s) are {normalized_shape}, got an input of "
            f"shape {tuple(input.shape)}"
        )


def _check_params(normalized_shape: tuple[int, ...], who: str, **params) -> None:
    for name, p in params.items():
        if p is not None and tuple(p.shape) != normalized_shape:
            raise ValueError(f"{who}: expected {name} of shape {normalized_shape}, got {tuple(p.shape)}")


def _as_shape(normalized_shape) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)


def _trailing_dims(input: torch.Tensor, normalized_shape) -> tuple[int, ...]:
    return tuple(range(input.dim() - len(normalized_shape), input.dim()))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    r"""Layer normalization (Ba et al. 2016) over the trailing ``normalized_shape`` axes.

    Same signature and semantics as :func:`torch.nn.functional.layer_norm`:
    :math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` with the mean and biased
    variance of each sample's trailing axes; ``weight`` and ``bias`` of shape ``normalized_shape``.
    """
    normalized_shape = _as_shape(normalized_shape)
    check_normalized_shape(input, normalized_shape, "layer_norm")
    _check_params(normalized_shape, "layer_norm", weight=weight, bias=bias)
    _check_eps(eps, True, "layer_norm")
    if kernels.choose("layer_norm", input) == "native":
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    return Normalize.apply(input, weight, bias, _trailing_dims(input, normalized_shape), eps, True)[0]


def rms_norm(input, normalized_shape, weight=None, eps: float | None = None) -> torch.Tensor:
    r"""RMS normalization (Zhang & Sennrich 2019) over the trailing ``normalized_shape`` axes.

    Same signature and semantics as :func:`torch.nn.functional.rms_norm`:
    :math:`y = \gamma x / \sqrt{\mathrm{mean}(x^2) + \epsilon}`, no centering, no bias.
    ``eps=None`` is the machine epsilon of the type the statistics are computed in
    (float32 for 16-bit and 32-bit inputs, float64 for float64), as in torch.
    """
    normalized_shape = _as_shape(normalized_shape)
    check_normalized_shape(input, normalized_shape, "rms_norm")
    _check_params(normalized_shape, "rms_norm", weight=weight)
    if eps is None:  # resolved here, not left to torch: before 2.7, torch took a 16-bit input's own epsilon
        eps = torch.finfo(accumulation_dtype(input.dtype)).eps
    _check_eps(eps, True, "rms_norm")
    if kernels.choose("rms_norm", input) == "native":
        return F.rms_norm(input, normalized_shape, weight, eps)
    return Normalize.apply(input, weight, None, _trailing_dims(input, normalized_shape), eps, False)[0]


def check_groups(input: torch.Tensor, num_groups: int, who: str) -> None:
    """Raise unless ``input`` is ``(N, C, *)`` with C divisible into ``num_groups`` groups of
    more than one value each (a group of one value normalizes to 0 whatever it holds)."""
    if input.dim() < 2:
        raise ValueError(f"{who}: expected an input of shape (N, C, *), got a {input.dim()}-D input")
    channels = input.shape[1]
    if channels % num_groups:
        raise ValueError(f"{who}: the {channels} channels of the input do not divide into {num_groups} groups")
    if channels // num_groups * math.prod(input.shape[2:]) == 1:
        raise ValueError(
            f"{who}: each group holds a single value ({channels // num_groups} channel per group, "
            f"spatial size {tuple(input.shape[2:])}), which normalizes to 0 "
            f"whatever it is; got an input of shape {tuple(input.shape)}. Use fewer groups."
        )


def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    r"""Group normalization (Wu & He 2018): the channels of each sample in ``num_groups`` groups.

    Same signature and semantics as :func:`torch.nn.functional.group_norm`. normlab's
    own implementation normalizes the view ``(N, G, C/G, *spatial)`` of the input over
    axes 2 and up, with the per-channel ``weight`` and ``bias`` viewed as ``(1, G, C/G, 1, ...)``.
    Unlike torch, a group of one value is refused for every batch size, not only for N = 1.
    """
    check_groups(input, num_groups, "group_norm")
    _check_eps(eps, True, "group_norm")
    if kernels.choose("group_norm", input) == "native":
        return F.group_norm(input, num_groups, weight, bias, eps)
    n, c, *spatial = input.shape
    view = (n, num_groups, c // num_groups, *spatial)
    param_view = (1, num_groups, c // num_groups, *[1] * len(spatial))
    weight, bias = (None if p is None else p.view(param_view) for p in (weight, bias))
    y = Normalize.apply(input.reshape(view), weight, bias, tuple(range(2, len(view))), eps, True)[0]
    return y.view(input.shape)


def spatial_size(input: torch.Tensor) -> int:
    """How many values each instance (one channel of one sample) holds."""
    return math.prod(input.shape[2:])


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    r"""Instance normalization (Ulyanov et al. 2016): each channel of each sample over its spatial axes.

    Same signature and semantics as :func:`torch.nn.functional.instance_norm`. With
    ``use_input_stats``, :math:`y = \gamma (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`,
    and running statistics, when given, are updated with the average over the batch of
    the instances' means and unbiased variances (torch's rule). Otherwise the running
    statistics normalize, exactly as batch norm does at inference.
    """
    if use_input_stats and spatial_size(input) == 1:
        raise ValueError(
            "instance_norm: normalizing each instance needs more than one spatial value, got an "
            f"input of shape {tuple(input.shape)}"
        )
    if eps < 0 or (use_input_stats and eps == 0):
        raise ValueError(f"instance_norm: eps must be positive, got {eps}")
    if not use_input_stats and (running_mean is None or running_var is None):
        raise ValueError("instance_norm: use_input_stats=False needs running_mean and running_var")
    if kernels.choose("instance_norm", input) == "native":
        return F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    if not use_input_stats:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    ndim = input.dim()
    weight, bias = _per_channel(weight, ndim), _per_channel(bias, ndim)
    if input.numel() == 0:  # an empty batch: no statistics, running ones left alone
        return affine(input, weight, bias)
    y, mean, var = Normalize.apply(input, weight, bias, tuple(range(2, ndim)), eps, True)
    update_running_stats(running_mean, running_var, mean.mean(0), var.mean(0), spatial_size(input), momentum)
    return y


# --- mean-only batch norm and weight norm: no division by a standard deviation ----------


def mean_only_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
) -> torch.Tensor:
    r"""Mean-only batch normalization (Salimans & Kingma 2016, section 4): per channel (dim 1),
    :math:`y = x - \mu_B + \beta` in training, with the batch mean over every other axis, and
    :math:`y = x - \hat\mu + \beta` otherwise. In training the running mean, when given, is
    updated as batch norm's: ``running_mean = (1 - momentum) * running_mean + momentum * mean``.

    torch has no such operation, so this always runs normlab's own implementation.
    """
    if training and values_per_channel(input) == 1:
        raise ValueError(
            "mean_only_batch_norm: training needs more than one value per channel (with one, the "
            f"output is the bias whatever the input), got an input of shape {tuple(input.shape)}"
        )
    ndim = input.dim()
    x = input.to(accumulation_dtype(input.dtype))
    if not training:
        if running_mean is None:
            raise ValueError("mean_only_batch_norm: evaluation needs running_mean")
        y = x - _per_channel(running_mean, ndim)
    elif input.numel() == 0:
        y = x
    else:
        dims = (0, *range(2, ndim))
        y, shift, mean_shifted = centered(x, dims, True)
        update_running_stats(running_mean, None, shift + mean_shifted, None, values_per_channel(input), momentum)
    return affine(y, None, _per_channel(bias, ndim)).to(input.dtype)


def norm_except_dim(v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """||v|| over every axis but ``dim``, keepdim; over all axes (a scalar) for dim None or -1.

    This is torch's convention (``torch.norm_except_dim``): -1 does not mean the last axis.
    """
    acc = accumulation_dtype(v.dtype)
    if dim is None or dim == -1:
        return torch.linalg.vector_norm(v, dtype=acc).to(v.dtype)
    dim %= v.dim()
    dims = tuple(d for d in range(v.dim()) if d != dim)
    return torch.linalg.vector_norm(v, 2, dims, keepdim=True, dtype=acc).to(v.dtype)


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None = 0) -> torch.Tensor:
    r"""Weight normalization (Salimans & Kingma 2016): :math:`w = g \, v / \lVert v \rVert`.

    The norm is over every axis of ``v`` but ``dim`` (one ``g`` per slice along ``dim``,
    e.g. per output unit for ``dim=0``), or over all of ``v`` for ``dim`` None or -1.
    Same semantics as ``torch._weight_norm(v, g, dim)``, which
    :func:`torch.nn.utils.parametrizations.weight_norm` runs.
    """
    dim = -1 if dim is None else dim
    if kernels.choose("weight_norm", v) == "native":
        return torch._weight_norm(v, g, dim)
    return v * (g / norm_except_dim(v, dim))


# --- batch norm followed by an activation ------------------------------------------------


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
    act = Activation(activation, param, residual, inplace_abn)
    _check_eps(eps, training, "batch_norm_act")
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps, act)
    statistics = Statistics(input, batch_dims(input), None)
    _refuse_too_few_values(statistics, input, "batch_norm_act")
    return batch_normalize(input, statistics, running_mean, running_var, weight, bias, momentum, eps, act=act)
