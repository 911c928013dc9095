"""Batch norm followed by an activation, as one layer (timm's norm_act style), and in-place ABN.

:class:`BatchNormAct` is the one factory: the activation is an argument, not a class
per combination. ``BatchNormAct(64, "relu")`` is ``BatchNorm2d(64)`` then ``ReLU``;
``forward(x, residual)`` adds a residual before the activation (the end of a ResNet
block); ``inplace_abn=True`` makes it in-place activated batch norm (Rota Bulo et al.
2018), which keeps only its output for backward. With ``normlab.use_backend("triton")``
on a CUDA GPU each of these is one kernel forward and one backward (see
``docs/kernels.md``); otherwise torch's batch norm and the activation (in-place ABN:
:class:`normlab.activation.InPlaceABN`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional
from ..activation import DEFAULT_PARAM, Activation
from ._base import fx_leaf
from .batchnorm import ANY_LAYOUT, _BatchNorm

__all__ = ["BatchNormAct"]


class BatchNormAct(_BatchNorm):
    r"""``y = act(gamma * (x - mean) / sqrt(var + eps) + beta [+ residual])``, statistics per channel (dim 1).

    Arguments: ``num_features``; ``activation``, one of ``"identity", "relu",
    "leaky_relu"`` (slope ``negative_slope``), ``"elu"`` (``alpha``), ``"silu",
    "sigmoid"``; then :class:`torch.nn.BatchNorm2d`'s (eps, momentum, affine,
    track_running_stats, device, dtype) and batch norm's keywords. Parameters, buffers,
    ``state_dict`` keys and train/eval behaviour are batch norm's, so a ``BatchNorm2d``
    checkpoint loads into it. Takes 2-D to 5-D inputs, like BatchNorm1d/2d/3d.

    ``inplace_abn=True``: in-place activated batch norm. Backward recomputes the
    normalized input from the output, so the layer keeps one tensor (its output) instead
    of two; it needs an invertible activation (identity, leaky_relu, elu), takes no
    residual, and scales by ``|weight| + eps`` so that the inversion is defined.

    A torch ``_BatchNorm``, as timm's ``BatchNormAct2d`` is a ``BatchNorm2d``, so that
    checkpoints and the tools that find batch norms by type work: ``swa_utils.update_bn``
    recomputes its statistics, FSDP keeps it in float32. What those tools cannot know is
    the activation: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` and
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` treat it as a plain batch norm and drop the
    activation (and in-place ABN's ``|weight| + eps`` scale), as they do timm's; normlab's
    ``convert_sync_batchnorm``, ``freeze_batchnorm`` and ``fold_batchnorm`` keep it.
    """

    _layouts = ANY_LAYOUT
    _scriptable = False

    def __init__(
        self,
        num_features: int,
        activation: str = "relu",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        negative_slope: float = DEFAULT_PARAM["leaky_relu"],
        alpha: float = DEFAULT_PARAM["elu"],
        inplace_abn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs)
        functional.activation_for(self, None, activation, negative_slope, alpha, None, inplace_abn)  # checks them
        self.activation = activation
        self.negative_slope = negative_slope
        self.alpha = alpha
        self.inplace_abn = inplace_abn

    def _act(self, input=None, residual: Tensor | None = None) -> Activation:
        return functional.activation_for(self, input, self.activation, self.negative_slope, self.alpha, residual,
                                         self.inplace_abn)

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input, residual)
        return self._normalize(input, None, self._act(input, residual))

    def _inference_weight(self) -> Tensor | None:
        return self._act().scale(self.weight, self.eps)

    def after_affine(self) -> nn.Module:
        return self._act().module()

    def synchronized(self, process_group=None) -> nn.Module:
        from .sync import SyncBatchNormAct, rebuilt

        return rebuilt(self, SyncBatchNormAct, process_group)

    def extra_repr(self) -> str:
        param = {"leaky_relu": f", negative_slope={self.negative_slope}", "elu": f", alpha={self.alpha}"}
        abn = ", inplace_abn=True" if self.inplace_abn else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{param.get(self.activation, '')}{abn}"
