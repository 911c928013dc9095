"""The state shared by every normalization with per-channel parameters and statistics.

:class:`NormBase` owns what batch norm and instance norm have in common: the
parameters ``weight`` and ``bias``, the buffers ``running_mean``, ``running_var`` and
``num_batches_tracked``, their initialization, the momentum rule, checkpoint loading
and the input checks. Names, shapes, defaults and the ``state_dict`` version are
torch.nn's, so checkpoints move between torch and normlab in both directions.
Subclasses state only what differs: the input layouts they accept (``_layouts``) and
their forward.

The two checks every normlab layer makes, with or without this base, are functions
here: :func:`check_tensor` (a floating-point tensor) and :func:`check_checkpoint_shapes`
(a ``state_dict`` of the layer's own shapes), each naming the layer in its error.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NormBase", "check_checkpoint_shapes", "check_tensor", "register_affine", "reset_affine"]


def check_tensor(name: str, input) -> None:
    """Raise a clear error, naming the layer ``name``, unless ``input`` is a floating-point tensor."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point input (float16, bfloat16, float32 or "
            f"float64), got {input.dtype}; convert it first, e.g. x.float()"
        )


def check_checkpoint_shapes(name: str, module: nn.Module, state_dict, prefix: str) -> None:
    """Raise a clear error if ``state_dict`` holds a parameter or buffer of ``module`` in another shape.

    Scalars are left to torch, which also accepts them saved as one-element vectors.
    """
    for key, mine in (*module._parameters.items(), *module._buffers.items()):
        theirs = state_dict.get(prefix + key)
        if mine is not None and mine.dim() and isinstance(theirs, torch.Tensor) and theirs.shape != mine.shape:
            raise ValueError(
                f"{name}: the checkpoint's '{prefix + key}' has shape {tuple(theirs.shape)}, "
                f"expected {tuple(mine.shape)}; it was saved from a layer of another size"
            )


def register_affine(module: nn.Module, shape, affine: bool, bias: bool, factory: dict) -> None:
    """Give ``module`` a ``weight`` and (if ``bias``) a ``bias`` parameter of ``shape``, or None."""
    module.register_parameter("weight", nn.Parameter(torch.empty(shape, **factory)) if affine else None)
    module.register_parameter("bias", nn.Parameter(torch.empty(shape, **factory)) if affine and bias else None)


def reset_affine(module: nn.Module) -> None:
    """Weight 1, bias 0: the identity map, where the layer has them."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


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
        register_affine(self, num_features, affine, bias, factory)
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
        reset_affine(self)

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
        check_checkpoint_shapes(self._name, self, state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # --- input checks -------------------------------------------------------------------

    @property
    def _name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input(self, input) -> None:
        """Raise a clear error for anything but a floating input of an accepted layout."""
        check_tensor(self._name, input)
        layouts = type(self)._layouts  # not self._layouts: torch 2.4's dynamo cannot read a class's dict through self
        if input.dim() not in layouts:
            expected = " or ".join(f"{r}-D {layout}" for r, layout in layouts.items())
            raise ValueError(
                f"{self._name}: expected a {expected} input, got a {input.dim()}-D input of "
                f"shape {tuple(input.shape)}"
            )
        self._check_channels(input, 1)

    def _check_channels(self, input, dim: int) -> None:
        """Raise unless dim ``dim`` of ``input`` holds ``num_features`` channels."""
        if input.shape[dim] != self.num_features:
            raise ValueError(
                f"{self._name}: expected {self.num_features} channels in dim {dim} of the input, got "
                f"{input.shape[dim]} (input shape {tuple(input.shape)})"
            )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )
