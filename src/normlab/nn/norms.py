"""Layer, group, instance and RMS normalization, drop-in for their torch.nn counterparts.

Each is batch norm's computation over other axes (``normlab.autograd.Normalize``):

    LayerNorm      each sample over its trailing ``normalized_shape`` axes
    RMSNorm        the same axes, without centering (``center=False``)
    GroupNorm      each sample over a group of channels and the spatial axes: the view
                   ``(N, G, C/G, *spatial)`` over axes 2 and up
    InstanceNorm   each sample's each channel over the spatial axes; may keep running
                   statistics, so it is a :class:`NormBase` like batch norm (as in torch)

Constructor arguments, parameters, buffers, ``state_dict`` keys and train/eval
behaviour are torch.nn's. Where normlab is stricter, it raises instead of computing
something that cannot be meant; each such place is stated in the class docstring.
"""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import nn

from .. import functional
from ._base import NormBase, check_checkpoint_shapes, check_tensor, register_affine, reset_affine

__all__ = ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _TrailingNorm(nn.Module):
    """What LayerNorm and RMSNorm share: ``normalized_shape``, ``eps`` and an elementwise affine map."""

    def __init__(self, normalized_shape, eps, elementwise_affine: bool, bias: bool, device, dtype) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)
        self.normalized_shape = tuple(int(n) for n in shape)
        if not self.normalized_shape or min(self.normalized_shape) < 1:
            raise ValueError(f"{type(self).__name__}: normalized_shape must be positive ints, got {normalized_shape!r}")
        if eps is not None and eps < 0:
            raise ValueError(f"{self._name}: eps must be non-negative, got {eps}")
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        register_affine(self, self.normalized_shape, elementwise_affine, bias, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight 1, bias 0."""
        reset_affine(self)

    @property
    def _name(self) -> str:
        return f"{type(self).__name__}({self.normalized_shape})"

    def _check_input(self, input) -> None:
        check_tensor(self._name, input)
        functional.check_normalized_shape(input, self.normalized_shape, self._name)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        check_checkpoint_shapes(self._name, self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)


class LayerNorm(_TrailingNorm):
    r"""Layer normalization (Ba, Kiros & Hinton 2016, "Layer Normalization"), drop-in for
    :class:`torch.nn.LayerNorm`.

    :math:`y = \gamma \, (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, with the mean and
    biased variance of each sample over its trailing ``normalized_shape`` axes;
    ``weight`` (:math:`\gamma`) and ``bias`` (:math:`\beta`) have shape
    ``normalized_shape``. The same in training and evaluation: nothing is kept.
    """

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


class RMSNorm(_TrailingNorm):
    r"""Root-mean-square normalization (Zhang & Sennrich 2019, "Root Mean Square Layer
    Normalization"), drop-in for :class:`torch.nn.RMSNorm`.

    :math:`y = \gamma \, x / \sqrt{\mathrm{mean}(x^2) + \epsilon}` over each sample's trailing
    ``normalized_shape`` axes: layer norm without centering and without a bias.
    ``eps=None`` is the machine epsilon of the type the statistics are computed in
    (float32 for 16- and 32-bit inputs, float64 for float64), as in torch.
    """

    def __init__(
        self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        return functional.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(nn.Module):
    r"""Group normalization (Wu & He 2018, "Group Normalization"), drop-in for :class:`torch.nn.GroupNorm`.

    The ``num_channels`` channels of each sample are split into ``num_groups`` groups of
    consecutive channels; each group is normalized over its channels and all spatial
    axes, :math:`y = \gamma \, (x - \mu_g) / \sqrt{\sigma_g^2 + \epsilon} + \beta`, with
    per-channel ``weight`` (:math:`\gamma`) and ``bias`` (:math:`\beta`). Computed as
    the view ``(N, G, C/G, *spatial)`` normalized over axes 2 and up. ``num_groups=1`` is
    layer norm over ``(C, *spatial)`` with per-channel parameters; ``num_groups=C`` is
    instance norm. The same in training and evaluation: nothing is kept.

    Stricter than torch: a group of one value (``C / G * spatial size == 1``) is refused
    for every batch size; torch refuses it only when the batch also has one sample, and
    otherwise returns the bias whatever the input.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_groups, self.num_channels = num_groups, num_channels
        if not all(isinstance(n, numbers.Integral) and n > 0 for n in (num_groups, num_channels)):
            raise ValueError(f"{self._name}: num_groups and num_channels must be positive ints")
        if num_channels % num_groups:
            raise ValueError(f"{self._name}: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        if eps < 0:
            raise ValueError(f"{self._name}: eps must be non-negative, got {eps}")
        self.eps = eps
        self.affine = affine
        register_affine(self, num_channels, affine, bias, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight 1, bias 0."""
        reset_affine(self)

    @property
    def _name(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels})"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        check_tensor(self._name, input)
        if input.dim() < 2:
            raise ValueError(
                f"{self._name}: expected an input of shape (N, C, *), got a {input.dim()}-D input of shape "
                f"{tuple(input.shape)}"
            )
        if input.shape[1] != self.num_channels:
            raise ValueError(
                f"{self._name}: expected {self.num_channels} channels in dim 1 of the input, got "
                f"{input.shape[1]} (input shape {tuple(input.shape)})"
            )
        functional.check_groups(input, self.num_groups, self._name)
        return functional.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        check_checkpoint_shapes(self._name, self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )


class _InstanceNorm(NormBase):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization:
    The Missing Ingredient for Fast Stylization"), drop-in for torch.nn.InstanceNorm1d/2d/3d.

    Each channel of each sample is normalized over its spatial axes:
    :math:`y = \gamma \, (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`, biased
    variance. Defaults as torch: ``affine=False``, ``track_running_stats=False``, so the
    statistics of the input itself are used in training and evaluation alike.

    With ``track_running_stats=True`` the layer keeps running statistics as torch does:
    each training step moves them towards the average over the batch's instances of
    their means and unbiased variances, ``running = (1 - momentum) * running + momentum *
    mean_n(stat_n)``, and evaluation normalizes with them, per channel, like batch norm
    at inference. As in torch, ``num_batches_tracked`` is kept for the ``state_dict``
    but never counts.

    An unbatched input (no N axis) is normalized as a batch of one, as in torch.

    Differences from torch, each where torch would compute something not meant:
    ``momentum=None`` with ``track_running_stats=True`` is refused (torch passes
    momentum 0 and the running statistics never move), and so is a channel count other
    than ``num_features`` when the layer has parameters or running statistics (torch
    raises only for ``affine=True``). Without either, a mismatch only warns, as in
    torch, since ``num_features`` is then unused.
    """

    _unbatched_rank: int

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        if momentum is None and track_running_stats:
            raise ValueError(
                f"{self._name}: momentum=None would never update the running statistics (torch's "
                "InstanceNorm passes momentum 0 for it); give a momentum in (0, 1], e.g. 0.1"
            )

    def _check_channels(self, input, dim: int) -> None:
        dim = 0 if input.dim() == self._unbatched_rank else 1
        if input.shape[dim] == self.num_features or self.affine or self.track_running_stats:
            return super()._check_channels(input, dim)
        warnings.warn(
            f"{self._name}: the input has {input.shape[dim]} channels in dim {dim}; num_features is "
            "unused without affine parameters or running statistics"
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        unbatched = input.dim() == self._unbatched_rank
        x = input[None] if unbatched else input
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats and functional.spatial_size(x) == 1:
            raise ValueError(
                f"{self._name}: normalizing each instance needs more than one spatial value, got an input of "
                f"shape {tuple(input.shape)}"
            )
        momentum = 0.0 if self.momentum is None else self.momentum  # None only without running statistics
        y = functional.instance_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats, momentum, self.eps
        )
        return y[0] if unbatched else y


class InstanceNorm1d(_InstanceNorm):
    """Instance normalization of a 3-D ``(N, C, L)`` or unbatched 2-D ``(C, L)`` input; see :class:`_InstanceNorm`."""

    _layouts = {2: "(C, L)", 3: "(N, C, L)"}
    _unbatched_rank = 2


class InstanceNorm2d(_InstanceNorm):
    """Instance normalization of a 4-D ``(N, C, H, W)`` or unbatched 3-D ``(C, H, W)`` input; see :class:`_InstanceNorm`."""

    _layouts = {3: "(C, H, W)", 4: "(N, C, H, W)"}
    _unbatched_rank = 3


class InstanceNorm3d(_InstanceNorm):
    """Instance normalization of a 5-D ``(N, C, D, H, W)`` or unbatched 4-D ``(C, D, H, W)`` input; see :class:`_InstanceNorm`."""

    _layouts = {4: "(C, D, H, W)", 5: "(N, C, D, H, W)"}
    _unbatched_rank = 4
