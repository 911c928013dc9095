"""The autograd Function every normlab normalization runs on, with a hand-derived backward.

A normalization is fixed by the axes its statistics are taken over (the math is in
``normlab.reference``): batch norm reduces over every axis but the channel axis, layer
norm over the trailing axes, instance norm over the spatial axes; group norm is
instance norm of a view of x that puts each group of channels on an axis of its own.
:class:`Normalize` takes ``x``, those axes, and ``weight`` and ``bias`` broadcastable
against ``x``, so that one forward and one backward serve every layer.

How the statistics are taken is the one thing that varies between batch-norm
variants, and it is pluggable: a :class:`Statistics` object does the statistics step
of the forward pass and its mirror in the backward pass (the sums over the same
values). The default takes them over ``dims`` of ``x``; with a mask, only over the
positions the mask keeps (padded sequences); ``normlab.nn.sync`` subclasses it to take
them over every rank of a process group. The normalization and its gradient are
written once, here.

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
from typing import NamedTuple

import torch

__all__ = ["Moments", "Normalize", "Statistics", "accumulation_dtype", "affine"]


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
    (RMSNorm) x is returned as it is, with None for the two statistics. The same as
    ``Statistics(x, dims).centered(x, center)``, in the shape callers used before.
    """
    x_c, moments = Statistics(x, dims).centered(x, center)
    return (x_c, moments.shift, moments.mean_shifted) if center else (x, None, None)


def mean_square(t: torch.Tensor, mean=None, dims=None) -> torch.Tensor:
    """``mean(t^2)`` over ``dims`` (or with the function ``mean``), recomputed in float64 where it overflows.

    In eager mode the overflow is looked for on the host (one sum of the per-group values), and the
    float64 pass runs only then; in a trace (torch.compile, export, jit.trace, vmap) both are computed
    and ``torch.where`` picks, since a trace cannot branch on values.
    """
    if mean is None:
        mean = lambda u: u.mean(dims, keepdim=True)  # noqa: E731
    ms = mean(t.square())
    if t.dtype == torch.float64:
        return ms
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._functorch.is_batchedtensor(t):
        return torch.where(torch.isinf(ms), mean(t.double().square()), ms)
    if math.isinf(float(ms.sum())):
        return mean(t.double().square())
    return ms


class Moments(NamedTuple):
    """The statistics of each group, in the form the normalization uses (keepdim tensors).

    The mean is kept as ``shift + mean_shifted``, with ``shift`` one of the group's own
    values, so that ``x - mean = (x - shift) - mean_shifted`` loses nothing to rounding.
    Without centering (RMSNorm) both are zero and ``var`` is the mean square.
    """

    shift: torch.Tensor
    mean_shifted: torch.Tensor
    var: torch.Tensor  # biased: the mean of squared deviations
    count: int  # how many values each statistic is taken over
    # (no ``mean`` property: the dynamo of torch 2.4 to 2.9 cannot read one off a NamedTuple)


class Statistics:
    """How :class:`Normalize` takes its statistics: over ``dims`` of ``x``, counting only
    the positions where ``mask`` is True (every position when it is None).

    ``mask`` is a bool tensor of x's rank that may vary only along ``dims`` (size 1 on
    the other axes), so that every group has the same ``count``: for batch norm of an
    ``(N, C, L)`` sequence batch it is ``(N, 1, L)``. Masked statistics are weighted
    moments; the output is still computed at every position (as Keras does), and the
    gradient reaches a masked-out value only through its own output.

    :meth:`centered` is the statistics step of the forward pass, :meth:`total` its
    mirror in the backward pass. A subclass that overrides :meth:`_total_count`,
    :meth:`_combine` and :meth:`total` takes the statistics over more than this tensor
    (``normlab.nn.sync``: over every rank of a process group).
    """

    differentiable = True  # False where the statistics cannot be rebuilt with autograd (double backward)

    def __init__(self, x: torch.Tensor, dims, mask: torch.Tensor | None = None) -> None:
        self.dims = tuple(dims)
        self.mask = mask
        self.local_count = self._local_count(x)
        self.count = self._total_count(self.local_count)

    def _local_count(self, x) -> int:
        if self.mask is None:
            return math.prod([x.shape[d] for d in self.dims])
        broadcast = math.prod([x.shape[d] for d in self.dims if self.mask.shape[d] == 1])
        return int(self.mask.sum()) * broadcast

    def _total_count(self, local_count: int) -> int:
        return local_count

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            t = torch.where(self.mask, t, 0)  # where, not *: padding may hold anything, even inf
        count = max(self.local_count, 1)
        total = t.sum(self.dims, keepdim=True)
        if t.dtype == torch.float64 or not t.is_floating_point():
            return total / count
        # finite values whose sum overflows the dtype (float32 values near 1e37): summed in float64, where
        # it fits, as mean_square does; the mean itself always fits
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._functorch.is_batchedtensor(t):
            return torch.where(~torch.isfinite(total), (t.double().sum(self.dims, keepdim=True) / count).to(t.dtype),
                               total / count)
        if not math.isfinite(float(total.sum())):  # (not isinf: sums of either sign can meet as NaN)
            return (t.double().sum(self.dims, keepdim=True) / count).to(t.dtype)
        return total / count

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        """One value of each group (zeros for a group without values)."""
        if self.local_count == 0:
            shape = [1 if d in self.dims else n for d, n in enumerate(x.shape)]
            return x.new_zeros(shape)
        if self.mask is None:
            return _first_of_group(x, self.dims)
        first = torch.unravel_index(self.mask.flatten().int().argmax(), self.mask.shape)
        for d in self.dims:
            x = x.narrow(d, int(first[d]) if self.mask.shape[d] > 1 else 0, 1)
        return x.contiguous()

    def centered(self, x: torch.Tensor, center: bool = True) -> tuple[torch.Tensor, Moments]:
        """``(x - mean, moments)``; differentiable in x where :attr:`differentiable`."""
        if not center:
            zero = x.new_zeros(())
            return self._combine(x, Moments(zero, zero, self.mean_square(x), self.local_count))
        shift = self._shift(x.detach())
        shifted = x - shift
        mean_shifted = self._mean(shifted)
        x_c = shifted - mean_shifted
        return self._combine(x_c, Moments(shift, mean_shifted, self.mean_square(x_c), self.local_count))

    def mean_square(self, t: torch.Tensor) -> torch.Tensor:
        """``mean(t^2)`` over each group; in float64 where the input's type overflows (values beyond about
        1.8e19 in float32), so that a huge but finite input still normalizes (its statistics then are
        float64 tensors, one value per group)."""
        return mean_square(t, self._mean)

    def _combine(self, x_c: torch.Tensor, local: Moments) -> tuple[torch.Tensor, Moments]:
        """Turn this tensor's moments into the moments the statistics are taken over."""
        return x_c, local

    def total(self, *sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The sums over everything the statistics span, given this tensor's sums over ``dims``."""
        return sums

    def within(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` where the statistics look, 0 elsewhere."""
        return t if self.mask is None else torch.where(self.mask, t, 0)


def _weight_is_constant_over(weight, dims, ndim: int) -> bool:
    """True when ``weight`` (broadcast against an ndim input) does not vary along ``dims``."""
    if weight is None:
        return True
    shape = (1,) * (ndim - weight.dim()) + tuple(weight.shape)
    return all(shape[d] == 1 for d in dims)


class Normalize(torch.autograd.Function):
    """``y = weight * (x - mean) / sqrt(var + eps) + bias``, statistics over ``dims`` of ``x``.

    Arguments of :meth:`forward`: the input ``x``; ``weight`` and ``bias`` broadcastable
    against it, or None; the reduced axes ``dims`` (non-negative); ``eps``; ``center``
    (False for RMSNorm, which only rescales by the root mean square); ``statistics``,
    how the statistics over ``dims`` are taken (default ``Statistics(x, dims)``); and
    ``moments``, the statistics when the caller has already taken them with
    ``statistics.centered`` (batch renormalization needs them to build its weight).

    Returns ``(y, mean, var)``: the output and the biased statistics (keepdim), which
    carry no gradient; callers update running statistics from them.

    Gradient, with ``g = dy * weight``, ``m`` the count, sums over the statistics'
    values and ``[in]`` 1 where the statistics look, 0 elsewhere:
    ``dx = (g - [in] * (sum(g) + x_hat * sum(g * x_hat)) / m) / sqrt(var + eps)``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dims, eps, center, statistics=None, moments=None):
        xa = x.to(accumulation_dtype(x.dtype))
        if statistics is None:
            statistics = Statistics(x, dims)
        elif statistics.dims != tuple(dims):
            raise ValueError(f"Normalize: statistics over dims {statistics.dims} given for dims {tuple(dims)}")
        if moments is None:
            x_c, moments = statistics.centered(xa, center)
        else:
            x_c = (xa - moments.shift) - moments.mean_shifted if center else xa
        inv_std = torch.rsqrt(moments.var + eps)
        y = affine(x_c * inv_std, weight, bias)
        mean = moments.shift + moments.mean_shifted if center else torch.zeros_like(moments.var)
        var = moments.var.clone()
        ctx.save_for_backward(x, weight, moments.shift, moments.mean_shifted, inv_std)
        ctx.config = (statistics, eps, center, moments.count)
        ctx.bias_like = None if bias is None else (bias.shape, bias.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, shift, mean_shifted, inv_std = ctx.saved_tensors
        statistics, eps, center, m = ctx.config
        dims = statistics.dims
        xa = x.to(accumulation_dtype(x.dtype))
        if torch.is_grad_enabled():  # double backward: the statistics must depend on x
            if not statistics.differentiable:
                raise RuntimeError(
                    f"{type(statistics).__name__} cannot be differentiated twice: its statistics "
                    "come from other processes. Double backward needs local statistics."
                )
            x_c, moments = statistics.centered(xa, center)
            inv_std = torch.rsqrt(moments.var + eps)
        else:
            x_c = (xa - shift) - mean_shifted if center else xa
        x_hat = x_c * inv_std
        dy = dy.to(x_hat.dtype)
        # dx = inv_std * (g - [in] * (mean(g) + x_hat * mean(g * x_hat))) with g = dy * weight;
        # where the weight is constant over the reduced axes it factors out of the means.
        constant = _weight_is_constant_over(weight, dims, x.dim())
        g = dy if constant else dy * weight
        gain = inv_std if weight is None or not constant else weight * inv_std
        # sums over every position (padded ones too: their outputs depend on the statistics)
        sum_g_xhat = (g * x_hat).sum(dims, keepdim=True)
        sums = statistics.total(sum_g_xhat, g.sum(dims, keepdim=True)) if center else statistics.total(sum_g_xhat)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            correction = x_hat * (-gain * sums[0] / m)
            if center:
                correction = correction - gain * sums[1] / m
            dx = torch.addcmul(statistics.within(correction), g, gain).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = (sum_g_xhat if constant else dy * x_hat).sum_to_size(weight.shape)
            dweight = dweight.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            shape, dtype = ctx.bias_like
            dbias = dy.sum_to_size(shape).to(dtype)
        return dx, dweight, dbias, None, None, None, None, None
