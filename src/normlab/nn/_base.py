"""The state shared by every normalization with per-channel parameters and statistics.

:class:`NormBase` owns what batch norm and instance norm have in common: the
parameters ``weight`` and ``bias``, the buffers ``running_mean``, ``running_var`` and
``num_batches_tracked``, their initialization, the momentum rule, checkpoint loading
and the input checks. Names, shapes, defaults and the ``state_dict`` version are
torch.nn's, so checkpoints move between torch and normlab in both directions.
Subclasses state only what differs: the input layouts they accept (``_layouts``) and
their forward.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NormBase"]


class NormBase(nn.Module):
    """Base of the batch- and instance-norm layers: parameters, running statistics, checks."""

    _version = 2  # torch.nn's: version 2 added num_batches_tracked
    _layouts: dict[int, str] = {}  # accepted input rank -> its layout, for error messages

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
        if eps < 0:
            raise ValueError(f"{name}: eps must be non-negative, got {eps}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(
                f"{name}: momentum is the weight of the new batch in the running averages and "
                f"must lie in [0, 1], or be None for the cumulative average; got {momentum}"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    # --- state --------------------------------------------------------------------------

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running statistics reset, weight 1, bias 0."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _momentum_for_this_batch(self) -> float:
        """Count the batch (in training, when tracking) and return its weight in the running average.

        ``momentum=None`` makes it the cumulative average: the n-th batch weighs 1/n.
        """
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # checkpoints from before num_batches_tracked existed
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        self._check_checkpoint_shapes(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_checkpoint_shapes(self, state_dict, prefix: str) -> None:
        """Raise a clear error for a checkpoint saved from a layer of another width."""
        for name in ("weight", "bias", "running_mean", "running_var"):
            mine, theirs = getattr(self, name), state_dict.get(prefix + name)
            if mine is not None and theirs is not None and theirs.shape != mine.shape:
                raise ValueError(
                    f"{self._name}: the checkpoint's '{prefix + name}' has shape "
                    f"{tuple(theirs.shape)}, expected {tuple(mine.shape)}; it was saved from a "
                    f"layer with {theirs.numel()} features, this one has {self.num_features}"
                )

    # --- input checks -------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input(self, input) -> None:
        """Raise a clear error for anything but a floating input of an accepted layout."""
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{self._name}: expected a torch.Tensor, got {type(input).__name__}")
        if not input.is_floating_point():
            raise TypeError(
                f"{self._name}: expected a floating-point input (float16, bfloat16, float32 or "
                f"float64), got {input.dtype}; convert it first, e.g. x.float()"
            )
        if input.dim() not in self._layouts:
            expected = " or ".join(f"{r}-D {layout}" for r, layout in self._layouts.items())
            raise ValueError(
                f"{self._name}: expected a {expected} input, got a {input.dim()}-D input of "
                f"shape {tuple(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{self._name}: expected {self.num_features} channels in dim 1 of the input, got "
                f"{input.shape[1]} (input shape {tuple(input.shape)})"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )
