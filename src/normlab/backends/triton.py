"""The "triton" backend: normlab's Triton kernels (``normlab.kernels.triton_ops``).

Batch norm, batch norm + activation (+ residual) and in-place activated batch norm, each one
kernel forward and one backward, on CUDA tensors of 2 to 5 dimensions and any size (64-bit
offsets from 2^31 elements on), and on CPU tensors when ``TRITON_INTERPRET=1``, for tests.
Needs the optional ``triton`` package (:data:`normlab.kernels.MIN_TRITON` or later),
imported only when a tensor takes this backend.
"""

from __future__ import annotations

import functools

import torch

from .. import kernels
from ..activation import Activation

__all__ = ["IMPLEMENTATIONS", "SKIPPING_NON_FINITE", "can_run"]

_IDENTITY = Activation()


def batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, act,
                   skip_non_finite=False):
    from ..kernels import triton_ops

    return triton_ops.batch_norm_act(input, weight, bias, act.residual, running_mean, running_var, training, momentum,
                                     eps, act.name, act.param, act.inplace_abn, skip_non_finite)


def batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, skip_non_finite=False):
    return batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps, _IDENTITY,
                          skip_non_finite)


IMPLEMENTATIONS = {"batch_norm": batch_norm, "batch_norm_act": batch_norm_act, "inplace_abn": batch_norm_act}

# The same, keeping the running statistics of a channel whose update is not finite as they were
# (non_finite="skip"), decided in the kernel: the engine hands them the buffers and no guard.
SKIPPING_NON_FINITE = {op: functools.partial(f, skip_non_finite=True) for op, f in IMPLEMENTATIONS.items()}


def can_run(op: str, x: torch.Tensor) -> bool:
    if not (2 <= x.dim() <= 5 and x.numel() > 0 and x.is_floating_point()) or not kernels._TRITON_USABLE:
        return False
    if x.is_cuda:
        return True
    if x.device.type != "cpu":
        return False
    from ..kernels import triton_bn  # only a CPU tensor with triton forced gets here

    return triton_bn.INTERPRETED
