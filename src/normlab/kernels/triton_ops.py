"""The Triton kernels behind autograd: a plain autograd Function in eager mode, torch custom ops under torch.compile.

:func:`batch_norm_act` is what the "triton" backend calls. In eager mode it runs
:class:`BatchNormAct`, an autograd Function that launches the kernels directly: the
forward kernel updates the running statistics in place (skipping, if asked, channels
whose update would not be finite, decided on the device), nothing is cloned or copied
and nothing waits for the device. Without a gradient to compute it launches the forward
alone.

Under torch.compile the same computation is two ops in the ``normlab`` namespace, opaque
to the compiler (it calls them as they are) and described to it by their fake (meta)
implementations:

    normlab::batch_norm_act          x, weight, bias, residual, running stats
                                     -> y, mean, rstd, updated running mean and var
    normlab::batch_norm_act_backward dy and what forward saved -> dx, dweight, dbias, dresidual

Both are functional, as torch.library requires of an op with an autograd formula: the
kernel writes the running-statistics update into new tensors, which
:func:`batch_norm_act` copies into the buffers (in the compiled graph).

Either way autograd saves x (and the residual when the activation needs it to recompute
z), or with ``inplace_abn`` only the output y; never the normalized tensor. Under
autocast the kernels take the dtypes they are given, as torch's batch norm does: a
float16 x with float32 parameters gives a float16 y, statistics in float32. Double
backward is not supported on this path.
"""

from typing import Optional

import torch
from torch import Tensor

from . import triton_bn

__all__ = ["BatchNormAct", "batch_norm_act"]


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _saved(x, y, residual, activation: str, inplace_abn: bool):
    """(what backward recomputes from, the residual it needs): y alone for in-place ABN; else x, and r before an act."""
    if inplace_abn:
        return y, None
    return x, (residual if activation != "identity" else None)


# --- eager: one autograd Function -------------------------------------------------------


class BatchNormAct(torch.autograd.Function):
    """``act(batch_norm(x) + residual)`` on the kernels, running statistics updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation, param,
                inplace_abn, skip_non_finite):
        y, mean, rstd = triton_bn.forward(x, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                                          activation, param, skip_non_finite=skip_non_finite)
        saved, r = _saved(x, y, residual, activation, inplace_abn)
        ctx.save_for_backward(saved, weight, bias, r, mean, rstd)
        ctx.config = (training, activation, param, inplace_abn)
        return y

    @staticmethod
    def backward(ctx, dy):
        saved, weight, bias, residual, mean, rstd = ctx.saved_tensors
        training, activation, param, inplace_abn = ctx.config
        need = ctx.needs_input_grad
        dx, dweight, dbias, dres = triton_bn.backward(dy, saved, weight, bias, residual, mean, rstd, training,
                                                      activation, param, inplace_abn, bool(need[3]))
        return (dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None,
                dres if need[3] else None) + (None,) * 9


# --- torch.compile: custom ops ----------------------------------------------------------


@torch.library.custom_op("normlab::batch_norm_act", mutates_args=())
def _forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    activation: str,
    param: float,
    inplace_abn: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``act(batch_norm(x) + residual)``; ``inplace_abn`` only changes what autograd saves."""
    update = training and running_mean is not None and running_var is not None
    new_running = (torch.empty_like(running_mean), torch.empty_like(running_var)) if update else None
    y, mean, rstd = triton_bn.forward(x, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                                      activation, param, new_running)
    return (y, mean, rstd, *(new_running or (mean.new_empty(0), mean.new_empty(0))))


@_forward.register_fake
def _(x, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation, param, inplace_abn):
    stats = x.new_empty(x.shape[1], dtype=_acc(x))
    if training and running_mean is not None and running_var is not None:
        new_running = (torch.empty_like(running_mean), torch.empty_like(running_var))
    else:
        new_running = (stats.new_empty(0), stats.new_empty(0))
    return torch.empty_like(x), stats, torch.empty_like(stats), *new_running


@torch.library.custom_op("normlab::batch_norm_act_backward", mutates_args=())
def _backward(
    dy: Tensor,
    saved: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    residual: Optional[Tensor],
    mean: Tensor,
    rstd: Tensor,
    training: bool,
    activation: str,
    param: float,
    from_output: bool,
    residual_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return triton_bn.backward(dy, saved, weight, bias, residual, mean, rstd, training, activation, param,
                              from_output, residual_grad)


@_backward.register_fake
def _(dy, saved, weight, bias, residual, mean, rstd, training, activation, param, from_output, residual_grad):
    C = saved.shape[1]
    pdtype = weight.dtype if weight is not None else _acc(saved)
    dx = torch.empty_like(saved)
    return (dx, saved.new_empty(C, dtype=pdtype), saved.new_empty(C, dtype=bias.dtype if bias is not None else pdtype),
            torch.empty_like(dx) if residual_grad else dx.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, _, _, training, _, _, activation, param, inplace_abn = inputs
    y, mean, rstd, new_mean, new_var = output
    saved, residual = _saved(x, y, residual, activation, inplace_abn)
    ctx.save_for_backward(saved, weight, bias, residual, mean, rstd)
    ctx.config = (training, activation, param, inplace_abn)
    ctx.mark_non_differentiable(mean, rstd, new_mean, new_var)


def _autograd_backward(ctx, dy, *_no_grads):
    saved, weight, bias, residual, mean, rstd = ctx.saved_tensors
    training, activation, param, inplace_abn = ctx.config
    need = ctx.needs_input_grad
    dx, dweight, dbias, dres = _backward(dy, saved, weight, bias, residual, mean, rstd, training, activation,
                                         param, inplace_abn, bool(need[3]))
    return (dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None,
            dres if need[3] else None, None, None, None, None, None, None, None, None)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _compiled(x, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation, param,
              inplace_abn, skip_non_finite):
    """The custom-op path: the running statistics' update comes back as tensors, copied into the buffers."""
    y, _, _, new_mean, new_var = _forward(x, weight, bias, residual, running_mean, running_var, training, momentum,
                                          eps, activation, param, inplace_abn)
    if new_mean.numel():
        with torch.no_grad():
            if skip_non_finite:
                finite = torch.isfinite(new_mean) & torch.isfinite(new_var)
                new_mean, new_var = torch.where(finite, new_mean, running_mean), torch.where(finite, new_var,
                                                                                               running_var)
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return y


# --- the entry point --------------------------------------------------------------------


def batch_norm_act(x, weight, bias, residual, running_mean, running_var, training: bool, momentum: float,
                   eps: float, activation: str, param: float, inplace_abn: bool,
                   skip_non_finite: bool = False) -> Tensor:
    """``act(batch_norm(x) + residual)`` on the Triton kernels; returns y (see the module docstring).

    In training the running statistics, when given, are updated in place with ``momentum``;
    with ``skip_non_finite``, channels whose update is not finite keep theirs.
    """
    args = (x, weight, bias, residual, running_mean, running_var, training, float(momentum), float(eps), activation,
            float(param), inplace_abn, skip_non_finite)
    if torch.compiler.is_compiling():
        return _compiled(*args)
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)
                                    or (bias is not None and bias.requires_grad)
                                    or (residual is not None and residual.requires_grad)):
        return BatchNormAct.apply(*args)
    return triton_bn.forward(x, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                             activation, param, skip_non_finite=skip_non_finite)[0]
