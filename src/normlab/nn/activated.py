"""Batch norm followed by an activation, as one layer (timm's norm_act style), and in-place ABN.

:class:`BatchNormAct` is the one factory: the activation is an argument, not a class
per combination. ``BatchNormAct(64, "relu")`` is ``BatchNorm2d(64)`` then ``ReLU``;
``forward(x, residual)`` adds a residual before the activation (the end of a ResNet
block); ``inplace_abn=True`` makes it in-place activated batch norm (Rota Bulo et al.
2018), which keeps only its output for backward. On a CUDA GPU with Triton installed
each of these is one kernel forward and one backward (see ``docs/kernels.md``); on the
CPU, torch's batch norm and activation (in-place ABN: :class:`normlab.activation.InPlaceABN`).
"""

from __future__ import annotations

import torch

from ..activation import ACTIVATIONS, DEFAULT_PARAM, INVERTIBLE, Activation
from .batchnorm import _BatchNorm

__all__ = ["BatchNormAct"]


class BatchNormAct(_BatchNorm):
    r"""``y = act(gamma * (x - mean) / sqrt(var + eps) + beta [+ residual])``, statistics per channel (dim 1).

    Arguments: ``num_features``; ``activation``, one of ``"identity", "relu",
    "leaky_relu"`` (slope ``negative_slope``), ``"elu"`` (``alpha``), ``"silu",
    "sigmoid"``; then :class:`torch.nn.BatchNorm2d`'s (eps, momentum, affine,
    track_running_stats, device, dtype). Parameters, buffers, ``state_dict`` keys and
    train/eval behaviour are batch norm's, so a ``BatchNorm2d`` checkpoint loads into it.
    Takes 2-D to 5-D inputs, like BatchNorm1d/2d/3d.

    ``inplace_abn=True``: in-place activated batch norm. Backward recomputes the
    normalized input from the output, so the layer keeps one tensor (its output) instead
    of two; it needs an invertible activation (identity, leaky_relu, elu), takes no
    residual, and scales by ``|weight| + eps`` so that the inversion is defined.
    """

    _layouts = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}

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
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{self._name}: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        param = {"leaky_relu": negative_slope, "elu": alpha}.get(activation)
        if inplace_abn and (activation not in INVERTIBLE or (param is not None and not param > 0)):
            raise ValueError(
                f"{self._name}: in-place activated batch norm recomputes its input from its output, so it "
                "needs an invertible activation: identity, leaky_relu with negative_slope > 0, or elu with "
                f"alpha > 0; got {activation!r}" + ("" if param is None else f" with parameter {param}")
            )
        self.activation = activation
        self.negative_slope = negative_slope
        self.alpha = alpha
        self.inplace_abn = inplace_abn

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is not None:
            if self.inplace_abn:
                raise ValueError(f"{self._name}: in-place activated batch norm takes no residual")
            if not isinstance(residual, torch.Tensor) or residual.shape != getattr(input, "shape", None):
                got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__
                raise ValueError(
                    f"{self._name}: expected a residual of the input's shape "
                    f"{tuple(getattr(input, 'shape', ()))}, got {got}"
                )
        param = {"leaky_relu": self.negative_slope, "elu": self.alpha}.get(self.activation, 0.0)
        return self._forward(input, None, Activation(self.activation, param, residual, self.inplace_abn))

    def extra_repr(self) -> str:
        param = {"leaky_relu": f", negative_slope={self.negative_slope}", "elu": f", alpha={self.alpha}"}
        abn = ", inplace_abn=True" if self.inplace_abn else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{param.get(self.activation, '')}{abn}"
