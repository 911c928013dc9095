"""Layer, group, instance and RMS normalization, each an instance of its torch.nn counterpart.

Each is batch norm's computation over other axes (``normlab.autograd.Normalize`` on
normlab's own backend):

    LayerNorm      each sample over its trailing ``normalized_shape`` axes
    RMSNorm        the same axes, without centering (``center=False``)
    GroupNorm      each sample over a group of channels and the spatial axes: the view
                   ``(N, G, C/G, *spatial)`` over axes 2 and up
    InstanceNorm   each sample's each channel over the spatial axes; may keep running
                   statistics, which normlab guards as batch norm's (``non_finite``)

Constructor arguments, parameters, buffers, ``state_dict`` keys and train/eval
behaviour are torch.nn's, and so is the state handling. Where normlab is stricter, it
raises instead of computing something that cannot be meant; each such place is stated
in the class docstring.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional
from ._base import Layer, as_size, check_arguments, fx_leaf, positive_ints
from .batchnorm import _choice, check_layout

__all__ = ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class LayerNorm(Layer, nn.LayerNorm):
    r"""Layer normalization (Ba, Kiros & Hinton 2016, "Layer Normalization"); a :class:`torch.nn.LayerNorm`.

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
        shape = positive_ints(normalized_shape, "normalized_shape", "LayerNorm")
        check_arguments("LayerNorm", eps)
        super().__init__(shape, eps, elementwise_affine, bias, device, dtype)

    @property
    def _name(self) -> str:
        return f"{type(self).__name__}({self.normalized_shape})"

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
        return self._forward(input)

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        return functional.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, who=self)

    def _traced_alone(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(Layer, nn.RMSNorm):
    r"""Root-mean-square normalization (Zhang & Sennrich 2019, "Root Mean Square Layer
    Normalization"); a :class:`torch.nn.RMSNorm`.

    :math:`y = \gamma \, x / \sqrt{\mathrm{mean}(x^2) + \epsilon}` over each sample's trailing
    ``normalized_shape`` axes: layer norm without centering and without a bias.
    ``eps=None`` is the machine epsilon of the type the statistics are computed in
    (float32 for 16- and 32-bit inputs, float64 for float64), as in torch.
    """

    def __init__(
        self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, device=None, dtype=None
    ) -> None:
        shape = positive_ints(normalized_shape, "normalized_shape", "RMSNorm")
        check_arguments(f"RMSNorm({shape})", eps, eps_may_be_none=True)
        super().__init__(shape, eps, elementwise_affine, device, dtype)

    _name = LayerNorm._name

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)
        return self._forward(input)

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        return functional.rms_norm(input, self.normalized_shape, self.weight, self.eps, who=self)

    def _traced_alone(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)


class GroupNorm(Layer, nn.GroupNorm):
    r"""Group normalization (Wu & He 2018, "Group Normalization"); a :class:`torch.nn.GroupNorm`.

    The ``num_channels`` channels of each sample are split into ``num_groups`` groups of
    consecutive channels; each group is normalized over its channels and all spatial
    axes, :math:`y = \gamma \, (x - \mu_g) / \sqrt{\sigma_g^2 + \epsilon} + \beta`, with
    per-channel ``weight`` (:math:`\gamma`) and ``bias`` (:math:`\beta`). Computed as
    the view ``(N, G, C/G, *spatial)`` normalized over axes 2 and up. ``num_groups=1`` is
    layer norm over ``(C, *spatial)`` with per-channel parameters; ``num_groups=C`` is
    instance norm. The same in training and evaluation: nothing is kept.

    Arguments as torch's: ``(num_groups, num_channels, eps, affine, device, dtype, *, bias)``.
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
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        who = f"GroupNorm({num_groups}, {num_channels})"
        num_groups = as_size(num_groups, "num_groups", who)
        num_channels = as_size(num_channels, "num_channels", who)
        if num_channels % num_groups:
            raise ValueError(f"{who}: num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        check_arguments(who, eps)
        # torch before 2.11 has no bias argument: build with one, then drop it
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        if affine and not bias:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """Weight 1, bias 0 (torch's, for a layer that may have no bias)."""
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def _name(self) -> str:
        return f"GroupNorm({self.num_groups}, {self.num_channels})"

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
        return self._forward(input)

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        return functional.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, who=self,
                                     channels=self.num_channels)

    def _traced_alone(self, input):
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class _InstanceNorm(Layer, nn.modules.instancenorm._InstanceNorm):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky 2016, "Instance Normalization:
    The Missing Ingredient for Fast Stylization"); a torch.nn.InstanceNorm1d/2d/3d.

    Each channel of each sample is normalized over its spatial axes:
    :math:`y = \gamma \, (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`, biased
    variance. Defaults as torch: ``affine=False``, ``track_running_stats=False``, so the
    statistics of the input itself are used in training and evaluation alike.

    With ``track_running_stats=True`` the layer keeps running statistics as torch does:
    each training step moves them towards the average over the batch's instances of
    their means and unbiased variances, ``running = (1 - momentum) * running + momentum *
    mean_n(stat_n)``, and evaluation normalizes with them, per channel, like batch norm
    at inference. As in torch, ``num_batches_tracked`` is kept for the ``state_dict``
    but never counts. ``non_finite`` (keyword) guards them as batch norm's does
    (:class:`normlab.nn.batchnorm._BatchNorm`): by default a channel whose statistics
    come out NaN or Inf keeps its running values.

    An unbatched input (no N axis) is normalized as a batch of one, as in torch.

    Differences from torch, each where torch would compute something not meant:
    ``momentum=None`` with ``track_running_stats=True`` is refused (torch passes
    momentum 0 and the running statistics never move), and so is a channel count other
    than ``num_features`` when the layer has parameters or running statistics (torch
    raises only for ``affine=True``). Without either, a mismatch only warns, as in
    torch, since ``num_features`` is then unused.
    """

    _unbatched_rank: int
    _layouts: dict[int, str]

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
        non_finite: str = "skip",
    ) -> None:
        cls = type(self).__name__
        num_features = as_size(num_features, "num_features", cls)
        check_arguments(cls, eps, momentum)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if affine and not bias:
            self.register_parameter("bias", None)
        if momentum is None and track_running_stats:
            raise ValueError(
                f"{self._name}: momentum=None would never update the running statistics (torch's "
                "InstanceNorm passes momentum 0 for it); give a momentum in (0, 1], e.g. 0.1"
            )
        _choice(self._name, "non_finite", non_finite, functional.NON_FINITE)
        self.non_finite = non_finite

    def reset_parameters(self) -> None:
        """Running statistics reset, weight 1, bias 0 (torch's, for a layer that may have no bias)."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input) -> None:
        check_layout(self, input)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input)
        return self._forward(input)

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """What ``torch.jit.script`` compiles: torch's instance-norm forward with the ``non_finite`` guard."""
        unbatched = input.dim() == self._get_no_batch_dim()
        x = input.unsqueeze(0) if unbatched else input
        momentum = self.momentum if self.momentum is not None else 0.0
        use_input_stats = self.training or not self.track_running_stats
        running_mean, running_var = self.running_mean, self.running_var
        if use_input_stats and self.non_finite != "propagate" and running_mean is not None and running_var is not None:
            old_mean, old_var = running_mean.clone(), running_var.clone()
            y = F.instance_norm(x, running_mean, running_var, self.weight, self.bias, True, momentum, self.eps)
            ok = torch.isfinite(running_mean) & torch.isfinite(running_var)
            running_mean.copy_(torch.where(ok, running_mean, old_mean))
            running_var.copy_(torch.where(ok, running_var, old_var))
        else:
            y = F.instance_norm(x, running_mean, running_var, self.weight, self.bias, use_input_stats, momentum,
                                self.eps)
        return y.squeeze(0) if unbatched else y

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        functional.check_tensor(input, self)
        self._check_input_dim(input)
        unbatched = input.dim() == self._unbatched_rank
        x = input[None] if unbatched else input
        if x.shape[1] != self.num_features:
            if self.affine or self.track_running_stats:
                functional.check_channels(input, self, self.num_features, dim=0 if unbatched else 1)
            warnings.warn(
                f"{self._name}: the input has {x.shape[1]} channels in dim {0 if unbatched else 1}; num_features is "
                "unused without affine parameters or running statistics", stacklevel=2
            )
        use_input_stats = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum  # None only without running statistics
        y = functional.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_input_stats,
                                     momentum, self.eps, non_finite=self.non_finite, who=self)
        return y[0] if unbatched else y

    def _options_torch_lacks(self) -> list[str]:
        return [] if self.non_finite == "skip" else [f"non_finite={self.non_finite!r}"]

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", non_finite={self.non_finite!r}" if self.non_finite != "skip" else "")


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    """Instance normalization of a 3-D ``(N, C, L)`` or unbatched 2-D ``(C, L)`` input; see :class:`_InstanceNorm`."""

    _layouts = {2: "(C, L)", 3: "(N, C, L)"}
    _unbatched_rank = 2


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    """Instance normalization of a 4-D ``(N, C, H, W)`` or unbatched 3-D ``(C, H, W)`` input; see :class:`_InstanceNorm`."""

    _layouts = {3: "(C, H, W)", 4: "(N, C, H, W)"}
    _unbatched_rank = 3


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    """Instance normalization of a 5-D ``(N, C, D, H, W)`` or unbatched 4-D ``(C, D, H, W)`` input; see :class:`_InstanceNorm`."""

    _layouts = {4: "(C, D, H, W)", 5: "(N, C, D, H, W)"}
    _unbatched_rank = 4

