"""Batch normalization and its variants, each an instance of the torch class it stands in for.

- :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d` (Ioffe & Szegedy 2015):
  ``torch.nn.BatchNorm1d/2d/3d``
- :class:`BatchRenorm1d`, :class:`BatchRenorm2d`, :class:`BatchRenorm3d` (Ioffe 2017):
  ``torch.nn.BatchNorm1d/2d/3d`` too
- :class:`GhostBatchNorm` (Hoffer, Hubara & Soudry 2017): torch's ``_BatchNorm``
- :class:`FrozenBatchNorm` (fixed statistics and affine, as torchvision's FrozenBatchNorm2d):
  a plain ``nn.Module``, as torchvision's is (see its docstring for why)

The variants inherit from batch norm, as timm's norm-act layers do, for what the rest of
the ecosystem then does with them: their ``state_dict`` is batch norm's (a
``torch.nn.BatchNorm2d`` checkpoint loads, and back), code that finds normalization
layers by type finds them (``torch.optim.swa_utils.update_bn`` recomputes their
statistics, FSDP keeps them in float32, ``torch.func.replace_all_batch_norm_modules_``
sees them), and their inference map is batch norm's, which is what folding and fusing
with a convolution use. What torch's tools cannot know about a variant is in its docstring.

Torch's state handling is used as it is; the layers hold state and resolve what a call
means (training or not, update or not, the momentum, the renormalization limits), and
:func:`normlab.functional.batch_norm_train` does the rest, with the layer's name in its
messages. Everything the trainable layers add to torch's lives in :class:`_BatchNorm`:
masked statistics for padded sequences (``forward(x, mask)``), freezing
(:meth:`_BatchNorm.freeze`), the policy for a batch with one value per channel, the
guard on the running statistics, and ``channel_dim`` for channels in another axis.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional
from ..activation import DEFAULT_PARAM, Activation
from ..autograd import Statistics
from ._base import Layer, as_size, check_arguments, fx_leaf

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "GhostBatchNorm",
    "FrozenBatchNorm",
]

LAYOUTS_1D = {2: "(N, C)", 3: "(N, C, L)"}
LAYOUTS_2D = {4: "(N, C, H, W)"}
LAYOUTS_3D = {5: "(N, C, D, H, W)"}
ANY_LAYOUT = {**LAYOUTS_1D, **LAYOUTS_2D, **LAYOUTS_3D}

FREEZE_MODES = {"statistics": (True, False), "affine": (False, True), "both": (True, True)}


def check_layout(who, input, channel_dim: int = 1) -> None:
    """Raise a clear ValueError (torch's type for a wrong rank) unless ``input`` has a rank in the layer
    ``who``'s ``_layouts`` (its class attribute: rank -> layout, for the message)."""
    if torch.compiler.is_compiling():  # eager checks only: torch 2.4's dynamo cannot read a dict that is a
        return                          # class attribute, and a trace guards on the shapes it saw anyway
    layouts = type(who)._layouts
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{functional.label(who)}: expected a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in layouts:
        expected = " or ".join(f"{r}-D {layout}" for r, layout in layouts.items()) + " input"
        if channel_dim != 1:
            expected += f" with the channels in dim {channel_dim}"
        raise functional.ShapeError(f"{functional.label(who)}: expected a {expected}, got a {input.dim()}-D "
                                    f"input of shape {tuple(input.shape)}")


class _BatchNorm(Layer, nn.modules.batchnorm._BatchNorm):
    r"""Batch normalization over the channel axis (dim 1) of the input.

    Training:  :math:`y = \gamma \, (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, with the
    mean and biased variance of each channel over the batch (and every axis after dim 1),
    and the running statistics updated as ``running = (1 - momentum) * running +
    momentum * batch`` with the unbiased variance (``momentum=None``: cumulative average).

    Evaluation: the same map with the running statistics, an affine map per channel.
    With ``track_running_stats=False`` the batch statistics are used in both modes.

    Accuracy far from zero depends on the implementation (docs/layers.md): the default
    dispatch takes torch's kernel, which on the CPU is off by about 1e-4 relative for
    float32 data like ``1e4 + N(0, 1)``; ``normlab.use_backend("normlab")`` switches to
    normlab's own (shifted two-pass statistics, about 4x the time), exact to 1e-6 there.

    Arguments, parameters, buffers and ``state_dict`` keys are torch.nn's (an instance
    is one of torch's, see ``normlab.nn.batchnorm``). normlab adds:

    - ``forward(x, mask)``: ``mask`` (bool, the input's shape without the channel axis,
      e.g. ``(N, L)`` for ``(N, C, L)``) is False at padded positions, which the batch
      statistics then ignore, as Keras's BatchNormalization does with masks. Every
      position is still normalized; inference is unchanged.
    - :meth:`freeze` ``("statistics" | "affine" | "both")``: a freeze that survives
      ``model.train()``, usable as a context manager.
    - keywords after torch's arguments:

      - ``one_value_per_channel``: what a training batch with a single value per channel
        does: ``"raise"`` a clear error (default; batch statistics are undefined),
        normalize it with the ``"running_stats"`` without updating them, or
        ``"skip_update"``: normalize it with its own statistics (a single value
        normalizes to 0, so the output is beta) and leave the running statistics alone.
      - ``non_finite``: what a training batch whose statistics are not finite (NaN or Inf
        in the input, or a variance that overflows) does to the running statistics:
        ``"skip"`` (default) leaves those channels' values as they were, decided on the
        device (no synchronization with a GPU, the same under torch.compile);
        ``"warn"`` also warns and ``"raise"`` raises FloatingPointError, naming the layer
        and the channels (both read the result on the host: on a GPU, one
        synchronization per training step); ``"propagate"`` lets them in, as torch does.
        The output of such a channel is non-finite in every mode, as in torch.
      - ``channel_dim``: the axis that holds the channels (default 1, torch's). With
        ``channel_dim=-1`` a ``BatchNorm1d(C)`` normalizes ``(N, L, C)`` token batches,
        exactly as torch's layer does on ``x.transpose(1, 2)``.

    torch's tools: ``swa_utils.update_bn`` resets and recomputes the statistics (a layer
    whose statistics are frozen refuses the reset, since it would keep the reset values);
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` makes a torch SyncBatchNorm of it,
    which keeps the parameters and statistics but none of the above (normlab's
    ``convert_sync_batchnorm`` keeps them); ``torch.jit.script`` compiles torch's
    computation with the freeze and the ``non_finite`` guard, without masks.
    """

    _layouts: dict[int, str] = ANY_LAYOUT

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
        one_value_per_channel: str = "raise",
        non_finite: str = "skip",
        channel_dim: int = 1,
    ) -> None:
        cls = type(self).__name__
        num_features = as_size(num_features, "num_features", cls)
        check_arguments(cls, eps, momentum)
        # torch before 2.11 has no bias argument: build with one, then drop it
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if affine and not bias:
            self.register_parameter("bias", None)
        _choice(self._name, "one_value_per_channel", one_value_per_channel, functional.ONE_VALUE_POLICIES)
        _choice(self._name, "non_finite", non_finite, functional.NON_FINITE)
        if one_value_per_channel == "running_stats" and not track_running_stats:
            raise ValueError(f"{self._name}: one_value_per_channel='running_stats' needs running statistics, but "
                             "track_running_stats=False")
        if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
            raise ValueError(f"{self._name}: channel_dim must be an int, got {channel_dim!r}")
        self.one_value_per_channel = one_value_per_channel
        self.non_finite = non_finite
        self.channel_dim = channel_dim
        self.frozen_statistics = False
        self.frozen_affine = False

    # --- state --------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Running statistics reset, weight 1, bias 0 (torch's, for a layer that may have no bias)."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batch seen. Refused while the statistics are frozen
        (:meth:`freeze`), since they would keep the reset values: unfreeze them first."""
        if getattr(self, "frozen_statistics", False):
            raise RuntimeError(
                f"{self._name}: its statistics are frozen (freeze('statistics')), so reset values would stay as "
                "they are; call unfreeze('statistics') first (normlab.precise_batchnorm recomputes every other "
                "batch norm and leaves frozen ones alone)"
            )
        super().reset_running_stats()

    # --- forward --------------------------------------------------------------------------

    def _check_input_dim(self, input) -> None:
        check_layout(self, input, self.channel_dim)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._scripted_forward(input)
        return self._forward(input, mask)

    @torch.jit.unused
    def _forward(self, input: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self._normalize(input, mask, None)

    def _normalize(self, input, mask, act) -> Tensor:
        """The forward pass, followed by ``act`` (:class:`normlab.nn.BatchNormAct`'s) when given."""
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input, mask) if act is None else fx_leaf(self, input, act.residual)
        self._check_input_dim(input)
        x = input
        if self.channel_dim != 1:  # the channels checked where the caller put them, then moved to dim 1
            functional.check_tensor(input, self)
            functional.check_channels(input, self, self.num_features, dim=self.channel_dim)
            x = input.movedim(self.channel_dim, 1)
        weight, bias = self.weight, self.bias
        if self.frozen_affine:
            weight = None if weight is None else weight.detach()
            bias = None if bias is None else bias.detach()
        running_mean, running_var = self.running_mean, self.running_var
        if self.frozen_statistics:
            if running_mean is None or running_var is None:
                raise RuntimeError(f"{self._name}: its statistics are frozen, but it has no running statistics "
                                   "(were they set to None, e.g. by torch.func.replace_all_batch_norm_modules_?)")
            batch_statistics = False
        else:  # torch's rule: batch statistics in training, and in eval without running statistics
            batch_statistics = self.training or (running_mean is None and running_var is None)
        if not batch_statistics:
            y = functional.batch_norm_inference(x, running_mean, running_var, weight, bias, self.eps, act, who=self,
                                                channels=self.num_features)
        else:
            track = self.training and self.track_running_stats
            if self.training and not self.track_running_stats:
                running_mean = running_var = None  # torch's rule: batch statistics, nothing updated
            y = functional.batch_norm_train(
                x, running_mean, running_var, weight, bias, self.momentum, self.eps,
                update=track, num_batches_tracked=self.num_batches_tracked if track else None, mask=mask,
                limits=self._renorm_limits(), virtual_batch_size=self._virtual_batch_size(), act=act,
                statistics=self._statistics(), one_value=self.one_value_per_channel, non_finite=self.non_finite,
                channels=self.num_features, who=self,
            )  # fmt: skip
        return y if self.channel_dim == 1 else y.movedim(1, self.channel_dim)

    def _statistics(self):
        """How the batch statistics are taken: a :class:`normlab.autograd.Statistics` class or factory
        (``normlab.nn.sync``: over every rank of a process group)."""
        return Statistics

    def _renorm_limits(self) -> tuple[float, float] | None:
        """The clipping limits ``(rmax, dmax)`` of batch renormalization for this step; None: batch norm."""
        return None

    def _virtual_batch_size(self) -> int | None:
        """Ghost batch norm's virtual batch size; None: the whole batch."""
        return None

    def _scripted_forward(self, input: Tensor) -> Tensor:
        """What ``torch.jit.script`` compiles (and torch.fx records for the layer traced alone): torch's
        batch-norm forward with the freeze, ``channel_dim`` and the ``non_finite`` guard (no masks)."""
        x = input if self.channel_dim == 1 else input.movedim(self.channel_dim, 1)
        weight = self.weight
        bias = self.bias
        if self.frozen_affine:
            if weight is not None:
                weight = weight.detach()
            if bias is not None:
                bias = bias.detach()
        batch_statistics = (self.training and not self.frozen_statistics) or (
            self.running_mean is None and self.running_var is None)
        update = batch_statistics and self.training and self.track_running_stats
        factor = 0.0
        num_batches_tracked = self.num_batches_tracked
        if update and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
            momentum = self.momentum
            factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
        running_mean: Optional[Tensor] = None
        running_var: Optional[Tensor] = None
        if update or not batch_statistics:
            running_mean = self.running_mean
            running_var = self.running_var
        if update and self.non_finite != "propagate" and running_mean is not None and running_var is not None:
            old_mean, old_var = running_mean.clone(), running_var.clone()
            y = F.batch_norm(x, running_mean, running_var, weight, bias, batch_statistics, factor, self.eps)
            ok = torch.isfinite(running_mean) & torch.isfinite(running_var)
            if self.non_finite == "raise" and not bool(ok.all()):
                running_mean.copy_(old_mean)
                running_var.copy_(old_var)
                raise RuntimeError("batch norm: the batch statistics are not finite (NaN or Inf in the input); the "
                                   "running statistics were left as they were")
            running_mean.copy_(torch.where(ok, running_mean, old_mean))
            running_var.copy_(torch.where(ok, running_var, old_var))
        else:
            y = F.batch_norm(x, running_mean, running_var, weight, bias, batch_statistics, factor, self.eps)
        return y if self.channel_dim == 1 else y.movedim(1, self.channel_dim)

    def _traced_alone(self, input):
        if self._scriptable and self.one_value_per_channel == "raise" and (self.momentum is not None or not (
                self.training and self.track_running_stats)):
            return self._scripted_forward(input)
        return super()._traced_alone(input)

    def __prepare_scriptable__(self):
        if self.one_value_per_channel != "raise":
            raise RuntimeError(f"{self._name}: torch.jit.script supports one_value_per_channel='raise' only, got "
                               f"{self.one_value_per_channel!r}")
        return super().__prepare_scriptable__()

    # --- freezing ---------------------------------------------------------------------------

    def freeze(self, what: str = "both") -> _FreezeHandle:
        """Freeze the ``"statistics"``, the ``"affine"`` parameters, or ``"both"``.

        - statistics: normalize with the running statistics and never update them, in
          training mode too (the layer computes its inference map);
        - affine: ``weight`` and ``bias`` get no gradient (``requires_grad`` is turned off,
          and forward uses them detached, so turning it back on by hand does not undo it);
        - both: both, which is what :class:`FrozenBatchNorm` computes, with this layer's
          parameters and ``state_dict`` kept.

        The freeze is a property of the layer, not of the training mode: ``model.train()``
        leaves it in place, and it lasts until :meth:`unfreeze`. It adds to an earlier
        freeze. The return value is also a context manager that restores the previous
        state on exit::

            bn.freeze("statistics")        # from now on
            with bn.freeze("both"):        # for this block only
                ...
        """
        statistics, affine = self._freeze_mode(what)
        if statistics and self.running_mean is None:
            raise ValueError(
                f"{self._name}: cannot freeze the statistics of a layer without running statistics "
                "(track_running_stats=False)"
            )
        return self._set_frozen(self.frozen_statistics or statistics, self.frozen_affine or affine)

    def unfreeze(self, what: str = "both") -> _FreezeHandle:
        """Undo :meth:`freeze` for ``what``; also a context manager that restores the previous state."""
        statistics, affine = self._freeze_mode(what)
        return self._set_frozen(self.frozen_statistics and not statistics, self.frozen_affine and not affine)

    def _freeze_mode(self, what: str) -> tuple[bool, bool]:
        if what not in FREEZE_MODES:
            raise ValueError(f"{self._name}: can freeze {tuple(FREEZE_MODES)}, got {what!r}")
        return FREEZE_MODES[what]

    def _set_frozen(self, statistics: bool, affine: bool) -> _FreezeHandle:
        parameters = [p for p in (self.weight, self.bias) if p is not None]
        handle = _FreezeHandle(self, (self.frozen_statistics, self.frozen_affine, [p.requires_grad for p in parameters]))
        if affine != self.frozen_affine:
            for p in parameters:
                p.requires_grad_(not affine)
        self.frozen_statistics, self.frozen_affine = statistics, affine
        return handle

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.one_value_per_channel != "raise":
            extra += f", one_value_per_channel={self.one_value_per_channel!r}"
        if self.non_finite != "skip":
            extra += f", non_finite={self.non_finite!r}"
        if self.channel_dim != 1:
            extra += f", channel_dim={self.channel_dim}"
        frozen = [name for name, on in (("statistics", self.frozen_statistics), ("affine", self.frozen_affine)) if on]
        return extra + (f", frozen={'+'.join(frozen)}" if frozen else "")

    # --- what the tools ask a batch norm (normlab.tools) ----------------------------------------

    def _options_torch_lacks(self) -> list[str]:
        options = [f"{name}={getattr(self, name)!r}" for name, default in (
            ("one_value_per_channel", "raise"), ("non_finite", "skip"), ("channel_dim", 1)) if getattr(self, name) != default]
        frozen = [what for what, on in (("statistics", self.frozen_statistics), ("affine", self.frozen_affine)) if on]
        return options + ([f"frozen {'+'.join(frozen)}"] if frozen else [])

    def uses_batch_statistics(self) -> bool:
        """Whether training mode normalizes with the batch's statistics (not when they are frozen)."""
        return not self.frozen_statistics

    def inference_affine(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` in float64 such that, in eval, the normalization computes ``scale * x + shift``
        per channel (followed by :meth:`after_affine`)."""
        return _inference_affine(self, self._inference_weight())

    def after_affine(self) -> nn.Module:
        """What follows the affine map at inference: ``nn.Identity()`` for a plain batch norm."""
        return nn.Identity()

    def frozen(self) -> nn.Module:
        """What ``normlab.freeze_batchnorm`` puts in this layer's place: its inference map, fixed."""
        return FrozenBatchNorm.from_batchnorm(self)

    def synchronized(self, process_group=None) -> nn.Module:
        """What ``normlab.convert_sync_batchnorm`` puts in this layer's place: the layer with its statistics
        taken over every rank of ``process_group``, holding the same parameters, buffers and options."""
        from .sync import SyncBatchNorm, rebuilt

        return rebuilt(self, SyncBatchNorm, process_group)

    def _inference_weight(self) -> Tensor | None:
        """The scale the normalization applies (in-place ABN: ``|weight| + eps``)."""
        return self.weight


def _inference_affine(bn: nn.Module, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` in float64 of ``weight * (x - running_mean) / sqrt(running_var + eps) + bias``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{functional.label(bn) if isinstance(bn, Layer) else type(bn).__name__}: without running "
                         "statistics (track_running_stats=False) the layer normalizes with each batch's statistics, "
                         "which no fixed map does")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if weight is not None:
            scale = scale * weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
    return scale, shift


def _choice(who: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{who}: {name} must be one of {allowed}, got {value!r}")


class _FreezeHandle:
    """What :meth:`_BatchNorm.freeze` returns: on leaving a ``with`` block, the state before the call comes back."""

    def __init__(self, layer: _BatchNorm, previous) -> None:
        self.layer, self.previous = layer, previous

    def __enter__(self) -> _BatchNorm:
        return self.layer

    def __exit__(self, *exc) -> None:
        layer = self.layer
        statistics, affine, requires_grad = self.previous
        layer.frozen_statistics, layer.frozen_affine = statistics, affine
        for p, flag in zip([p for p in (layer.weight, layer.bias) if p is not None], requires_grad):
            p.requires_grad_(flag)


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch normalization of a 2-D ``(N, C)`` or 3-D ``(N, C, L)`` input; a ``torch.nn.BatchNorm1d``;
    see :class:`_BatchNorm`."""

    _layouts = LAYOUTS_1D


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Batch normalization of a 4-D ``(N, C, H, W)`` input; a ``torch.nn.BatchNorm2d``; see :class:`_BatchNorm`."""

    _layouts = LAYOUTS_2D


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch normalization of a 5-D ``(N, C, D, H, W)`` input; a ``torch.nn.BatchNorm3d``; see :class:`_BatchNorm`."""

    _layouts = LAYOUTS_3D


# --- batch renormalization -------------------------------------------------------------------


class _BatchRenorm(_BatchNorm):
    r"""Batch renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing
    Minibatch Dependence in Batch-Normalized Models").

    Training: :math:`y = \gamma \, (\hat x \, r + d) + \beta`, where :math:`\hat x = (x - \mu_B) /
    \sigma_B` is batch norm's and

    .. math::
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}(\sigma_B / \sigma), \qquad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}((\mu_B - \mu) / \sigma)

    are treated as constants in the backward pass (stop-gradient). The standard
    deviations are those batch norm uses: :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}` with
    the biased batch variance it normalizes with, and :math:`\sigma = \sqrt{\text{running\_var}
    + \epsilon}` with the unbiased running variance it keeps and normalizes with at inference;
    :math:`\mu` and :math:`\sigma` are taken before this step updates them. Unclipped,
    the training output is therefore exactly the inference output
    :math:`\gamma (x - \mu) / \sigma + \beta`; clipped at ``rmax=1, dmax=0`` it is batch norm.

    Running statistics and inference: as batch norm (the same buffers and update).

    Schedule (the paper's Sec. 4): ``rmax`` and ``dmax`` are the final limits. For the
    first ``warmup_steps`` training steps the layer is batch norm (r = 1, d = 0, while the
    running statistics settle); then the limits grow linearly, reaching ``rmax`` at step
    ``rmax_full_at`` and ``dmax`` at step ``dmax_full_at`` (the paper: 1 -> 3 by 40k
    steps, 0 -> 5 by 25k, after 5k steps of batch norm). :meth:`limits` gives them.

    The step counter is ``num_batches_tracked``: it counts exactly the batches the running
    statistics have absorbed, which is what the warm-up waits for; it is already in the
    ``state_dict`` (so a checkpoint resumes the schedule where it was, and a torch
    BatchNorm checkpoint loads with its keys unchanged); and ``reset_running_stats()``
    resets it along with the statistics, restarting the warm-up when it is needed again
    (``swa_utils.update_bn`` does, and its pass is then batch norm's, as it should be to
    estimate the statistics). Hence ``track_running_stats=True`` is required.
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` would make a plain SyncBatchNorm of it;
    normlab's ``convert_sync_batchnorm`` makes a :class:`normlab.nn.SyncBatchRenorm`.
    """

    _scriptable = False

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
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup_steps: int = 5_000,
        rmax_full_at: int = 40_000,
        dmax_full_at: int = 25_000,
        **kwargs,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs)
        if not track_running_stats:
            raise ValueError(
                f"{self._name}: needs track_running_stats=True: r and d compare the batch statistics "
                "with the running ones"
            )
        if not rmax >= 1 or not dmax >= 0:
            raise ValueError(f"{self._name}: needs rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
        if min(warmup_steps, rmax_full_at, dmax_full_at) < 0:
            raise ValueError(f"{self._name}: the schedule's steps must be non-negative")
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.rmax_full_at, self.dmax_full_at = warmup_steps, rmax_full_at, dmax_full_at

    def limits(self, step: int | None = None) -> tuple[float, float]:
        """``(rmax, dmax)`` at training step ``step`` (default: the next one, ``num_batches_tracked``)."""
        step = int(self.num_batches_tracked) if step is None else step

        def ramp(start: float, final: float, full_at: int) -> float:
            if step < self.warmup_steps:
                return start
            span = full_at - self.warmup_steps
            return final if span <= 0 else start + (final - start) * min(1.0, (step - self.warmup_steps) / span)

        return ramp(1.0, self.rmax, self.rmax_full_at), ramp(0.0, self.dmax, self.dmax_full_at)

    def _renorm_limits(self):
        if self.running_mean is None or self.running_var is None or self.num_batches_tracked is None:
            # nothing to renormalize towards (torch.func.replace_all_batch_norm_modules_ removes them so that
            # every call uses its batch's statistics): batch norm, as during the warm-up
            return None
        step = self.num_batches_tracked
        if step.device.type != "cpu" or functional._in_trace():  # not read on the host: the limits as tensors
            return self._ramp(step, 1.0, self.rmax, self.rmax_full_at), self._ramp(step, 0.0, self.dmax, self.dmax_full_at)
        rmax, dmax = self.limits()
        return None if (rmax, dmax) == (1.0, 0.0) else (rmax, dmax)  # during the warm-up: batch norm's own path

    def _ramp(self, step: Tensor, start: float, final: float, full_at: int) -> Tensor:
        """:meth:`limits`' ramp in tensor operations, for a step counter that stays on its device."""
        span = full_at - self.warmup_steps
        if span <= 0:
            grown = torch.full((), final, device=step.device)
        else:
            grown = start + (final - start) * ((step - self.warmup_steps) / span).clamp(0, 1)
        return torch.where(step < self.warmup_steps, torch.full((), start, device=step.device), grown)

    def synchronized(self, process_group=None) -> nn.Module:
        from .sync import SyncBatchRenorm, rebuilt

        return rebuilt(self, SyncBatchRenorm, process_group)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_steps={self.warmup_steps}, "
            f"rmax_full_at={self.rmax_full_at}, dmax_full_at={self.dmax_full_at}"
        )


class BatchRenorm1d(_BatchRenorm, nn.BatchNorm1d):
    """Batch renormalization of a 2-D ``(N, C)`` or 3-D ``(N, C, L)`` input; see :class:`_BatchRenorm`."""

    _layouts = LAYOUTS_1D


class BatchRenorm2d(_BatchRenorm, nn.BatchNorm2d):
    """Batch renormalization of a 4-D ``(N, C, H, W)`` input; see :class:`_BatchRenorm`."""

    _layouts = LAYOUTS_2D


class BatchRenorm3d(_BatchRenorm, nn.BatchNorm3d):
    """Batch renormalization of a 5-D ``(N, C, D, H, W)`` input; see :class:`_BatchRenorm`."""

    _layouts = LAYOUTS_3D


# --- ghost batch norm ----------------------------------------------------------------------------


class GhostBatchNorm(_BatchNorm):
    r"""Ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize
    better", Alg. 1): batch norm over virtual batches.

    Training: the batch is split along dim 0 into virtual batches of
    ``virtual_batch_size`` samples (the last one may be smaller), and each virtual batch
    :math:`k` is normalized with its own statistics,
    :math:`y_k = \gamma (x_k - \mu_k) / \sqrt{\sigma_k^2 + \epsilon} + \beta`.

    Running statistics: updated once per virtual batch, in order, exactly as batch norm
    would be if it saw the virtual batches one after another (the paper's update); so
    ``momentum`` applies per virtual batch and ``num_batches_tracked`` counts virtual
    batches. Inference: batch norm with the running statistics. With
    ``virtual_batch_size`` at least the batch size it is batch norm.

    Accepts any ``(N, C, *)`` input of rank 2 to 5; the other arguments are batch norm's.
    A torch ``_BatchNorm``: ``swa_utils.update_bn`` estimates its statistics over virtual
    batches, as training does; ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` would
    make it a SyncBatchNorm over the whole batch of every rank (normlab's converter
    leaves it local, as ghost batches are by design).
    """

    _layouts = ANY_LAYOUT
    _scriptable = False

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
        virtual_batch_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs)
        self.virtual_batch_size = as_size(virtual_batch_size, "virtual_batch_size", self._name)

    def _virtual_batch_size(self) -> int | None:
        return self.virtual_batch_size

    def synchronized(self, process_group=None) -> nn.Module:
        return self  # ghost batches are local by design

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"


# --- frozen batch norm ---------------------------------------------------------------------------


class FrozenBatchNorm(Layer, nn.Module):
    r"""Batch norm with fixed statistics and affine parameters, in training as in eval:

    .. math:: y = \text{act}(\text{weight} \, (x - \text{running\_mean}) / \sqrt{\text{running\_var} + \epsilon} + \text{bias})

    As torchvision's ``FrozenBatchNorm2d`` (``torchvision.ops.misc``): ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` are buffers, so nothing is trained or updated;
    a batch norm's ``state_dict`` (torch's or normlab's, with or without affine
    parameters) loads into it, its ``num_batches_tracked`` dropped. It accepts any
    ``(N, C, *)`` input of rank 2 to 5. ``activation`` (keyword, default ``"identity"``;
    ``negative_slope`` and ``alpha`` as :class:`normlab.nn.BatchNormAct`'s) follows the map,
    as in timm's ``FrozenBatchNormAct2d``: the frozen form of a ``BatchNormAct``.
    ``normlab.freeze_batchnorm(model)`` puts one in place of each batch norm of a model,
    the usual way to fine-tune with batches too small for batch statistics (detection
    backbones). To keep a layer's parameters and merely stop it, see
    :meth:`_BatchNorm.freeze`.

    A plain ``nn.Module``, not a torch batch norm, as torchvision's is, because the tools
    that find batch norms by type would do the wrong thing with it:
    ``swa_utils.update_bn`` would reset its statistics and never recompute them (it never
    uses batch statistics), ``convert_sync_batchnorm`` would make it trainable again, and
    ``replace_all_batch_norm_modules_`` would delete the statistics it is made of.
    """

    _layouts = ANY_LAYOUT

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None, *, activation: str = "identity",
                 negative_slope: float = DEFAULT_PARAM["leaky_relu"], alpha: float = DEFAULT_PARAM["elu"]) -> None:
        super().__init__()
        self.num_features = as_size(num_features, "num_features", "FrozenBatchNorm")
        check_arguments("FrozenBatchNorm", eps)
        self.eps = eps
        functional.activation_for(self, None, activation, negative_slope, alpha, None, False)  # checks it
        self.activation, self.negative_slope, self.alpha = activation, negative_slope, alpha
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(self.num_features, **factory))
        self.register_buffer("bias", torch.zeros(self.num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
        self.register_buffer("running_var", torch.ones(self.num_features, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """A FrozenBatchNorm computing ``bn``'s current inference map (torch's or normlab's batch norm, with
        the activation of a ``BatchNormAct``)."""
        if bn.running_mean is None:
            raise ValueError(f"FrozenBatchNorm: {bn} has no running statistics (track_running_stats=False) to freeze")
        activation = {k: getattr(bn, k) for k in ("activation", "negative_slope", "alpha") if hasattr(bn, k)}
        frozen = cls(bn.num_features, bn.eps, device=bn.running_mean.device, dtype=bn.running_mean.dtype,
                     **activation)
        weight = bn._inference_weight() if isinstance(bn, _BatchNorm) else bn.weight
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            if bn.running_var is not None:  # (mean-only batch norm has none: 1 leaves the map x - mean)
                frozen.running_var.copy_(bn.running_var)
            if weight is not None:
                frozen.weight.copy_(weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
        return frozen.train(bn.training)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # a batch norm's checkpoint: no counter here; without affine parameters, the identity's
        state_dict.pop(prefix + "num_batches_tracked", None)
        if prefix + "running_mean" in state_dict:
            for name, value in (("weight", 1.0), ("bias", 0.0)):
                state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), value))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _act(self) -> Activation | None:
        if self.activation == "identity":
            return None
        return Activation(self.activation, {"leaky_relu": self.negative_slope, "elu": self.alpha}.get(self.activation, 0.0))

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self._forward(input)

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        check_layout(self, input)
        return functional.batch_norm_inference(input, self.running_mean, self.running_var, self.weight, self.bias,
                                               self.eps, self._act(), who=self, channels=self.num_features)

    def __prepare_scriptable__(self):
        if self.activation != "identity":
            raise RuntimeError(f"{self._name}: torch.jit.script supports activation='identity' only")
        return self

    def _traced_alone(self, input):
        if self.activation != "identity":
            return super()._traced_alone(input)
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def uses_batch_statistics(self) -> bool:
        return False

    def inference_affine(self) -> tuple[Tensor, Tensor]:
        return _inference_affine(self, self.weight)

    def after_affine(self) -> nn.Module:
        act = self._act()
        return nn.Identity() if act is None else act.module()

    def frozen(self) -> nn.Module:
        return self

    def synchronized(self, process_group=None) -> nn.Module:
        return self  # nothing to synchronize: no batch statistics

    def extra_repr(self) -> str:
        act = "" if self.activation == "identity" else f", activation={self.activation!r}"
        return f"{self.num_features}, eps={self.eps}{act}"
