"""The Triton kernels as torch custom ops, so that torch.compile, autocast and autograd see ops.

Two ops in the ``normlab`` namespace, opaque to torch.compile (it calls them as they
are) and described to it by their fake (meta) implementations:

    normlab::batch_norm_act          x, weight, bias, residual, running stats
                                     -> y, mean, rstd, updated running mean and var
    normlab::batch_norm_act_backward dy and what forward saved -> dx, dweight, dbias, dresidual

Both are functional, as torch.library requires of an op with an autograd formula: the
kernel computes the running-statistics update and writes it into new tensors, which
:func:`batch_norm_act` copies into the buffers.

:func:`batch_norm_act` is what ``normlab.functional`` calls. Its autograd saves x (and
the residual when the activation needs it to recompute z), or with ``inplace_abn`` only
the output y; never the normalized tensor. Under autocast the ops take the dtypes they
are given, as torch's batch norm does: a float16 x with float32 parameters gives a
float16 y, statistics in float32. Double backward is not supported on this path.
"""

from typing import Optional

import torch
from torch import Tensor

from . import triton_bn

__all__ = ["batch_norm_act"]


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    if inplace_abn:
        saved, residual = y, None
    else:
        saved = x
        residual = residual if activation != "identity" else None  # z is needed only for act'
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


def batch_norm_act(x, weight, bias, residual, running_mean, running_var, training: bool, momentum: float,
                   eps: float, activation: str, param: float, inplace_abn: bool) -> Tensor:
    """``act(batch_norm(x) + residual)`` on the Triton kernels; returns y (see the module docstring)."""
    y, _, _, new_mean, new_var = _forward(x, weight, bias, residual, running_mean, running_var, training,
                                          float(momentum), float(eps), activation, float(param), inplace_abn)
    if new_mean.numel():
        with torch.no_grad():
            running_mean.copy_(new_mean)
            running_var.copy_(new_var)
    return y
