"""Batch normalization and its variants, drop-in for torch.nn.BatchNorm1d/2d/3d.

- :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d` (Ioffe & Szegedy 2015)
- :class:`BatchRenorm1d`, :class:`BatchRenorm2d`, :class:`BatchRenorm3d` (Ioffe 2017)
- :class:`GhostBatchNorm` (Hoffer, Hubara & Soudry 2017)
- :class:`FrozenBatchNorm` (fixed statistics and affine, as torchvision's FrozenBatchNorm2d)

Everything the trainable layers share lives in :class:`_BatchNorm` (and, below it,
:class:`normlab.nn._base.NormBase`): the train/eval logic, masked statistics for padded
sequences (``forward(x, mask)``), freezing (:meth:`_BatchNorm.freeze`), the policy for a
batch with one value per channel, and the guard on the running statistics. A variant
states only what differs: renormalization its clipping limits, ghost batch norm its
virtual batches; ``normlab.nn.sync`` only where the statistics are taken.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import functional
from ..activation import Activation
from ..autograd import Statistics
from ._base import NormBase, check_checkpoint_shapes

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

ONE_VALUE_POLICIES = ("raise", "running_stats", "skip_update")
FREEZE_MODES = {"statistics": (True, False), "affine": (False, True), "both": (True, True)}


class _BatchNorm(NormBase):
    r"""Batch normalization over dim 1 of the input.

    Training:  :math:`y = \gamma \, (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, with the
    mean and biased variance of each channel over the batch (and every axis after dim 1),
    and the running statistics updated as ``running = (1 - momentum) * running +
    momentum * batch`` with the unbiased variance (``momentum=None``: cumulative average).

    Evaluation: the same map with the running statistics, an affine map per channel.
    With ``track_running_stats=False`` the batch statistics are used in both modes.

    Arguments, parameters, buffers and ``state_dict`` keys are torch.nn's. normlab adds:

    - ``forward(x, mask)``: ``mask`` (bool, the input's shape without dim 1, e.g.
      ``(N, L)`` for ``(N, C, L)``) is False at padded positions, which the batch
      statistics then ignore, as Keras's BatchNormalization does with masks. Every
      position is still normalized; inference is unchanged.
    - :meth:`freeze` ``("statistics" | "affine" | "both")``: a freeze that survives
      ``model.train()``, usable as a context manager.
    - ``one_value_per_channel`` (keyword): what a training batch with a single value per
      channel does: ``"raise"`` a clear error (default; batch statistics are undefined),
      normalize it with the ``"running_stats"`` without updating them, or ``"skip_update"``:
      normalize it with its own statistics (a single value normalizes to 0, so the
      output is beta) and leave the running statistics as they were.

    Non-finite inputs: NaN or Inf in a channel make that channel's batch statistics,
    and so its whole output, non-finite, as in torch. What normlab adds: a training
    step that would write non-finite values into the running statistics raises
    ``FloatingPointError`` naming the layer and the channels, and leaves the running
    statistics as they were (as does any step that raises). Set ``check_finite = False``
    (on a layer or on the class) to skip that check, which on a GPU waits for the device
    once per call.
    """

    check_finite: bool = True
    frozen_statistics: bool = False  # see freeze()
    frozen_affine: bool = False

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
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        if one_value_per_channel not in ONE_VALUE_POLICIES:
            raise ValueError(
                f"{self._name}: one_value_per_channel must be one of {ONE_VALUE_POLICIES}, got "
                f"{one_value_per_channel!r}"
            )
        if one_value_per_channel == "running_stats" and not track_running_stats:
            raise ValueError(
                f"{self._name}: one_value_per_channel='running_stats' needs running statistics, "
                "but track_running_stats=False"
            )
        self.one_value_per_channel = one_value_per_channel

    # --- forward --------------------------------------------------------------------------

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(input, mask)

    def _forward(self, input: torch.Tensor, mask: torch.Tensor | None, act: Activation | None = None) -> torch.Tensor:
        """The forward pass; ``act`` is what follows the normalization (:class:`normlab.nn.BatchNormAct`'s)."""
        self._check_input(input)
        mask = functional.batch_mask(input, mask, self._name)
        weight, bias = self.weight, self.bias
        if self.frozen_affine:
            weight, bias = (None if p is None else p.detach() for p in (weight, bias))
        # Batch statistics in training, and in eval when there are no running ones.
        if self.running_mean is not None and (not self.training or self.frozen_statistics):
            return self._with_running_stats(input, weight, bias, act)
        return self._restoring_running_stats(self._normalize_batch, input, mask, weight, bias, act)

    def _with_running_stats(self, input, weight, bias, act) -> torch.Tensor:
        return functional.batch_norm_inference(input, self.running_mean, self.running_var, weight, bias, self.eps, act)

    def _normalize_batch(self, input, mask, weight, bias, act) -> torch.Tensor:
        """Normalize with batch statistics, updating the running ones in training."""
        statistics = self._statistics(input, mask)
        update = self.training and self.track_running_stats
        if functional.too_few_values(statistics, input):
            if self.one_value_per_channel == "raise":
                where = "" if mask is None else f" and {statistics.count} unmasked value(s) per channel"
                raise ValueError(
                    f"{self._name}: training needs more than one value per channel to compute batch "
                    f"statistics, got an input of shape {tuple(input.shape)}{where}. Use a batch of at "
                    "least 2 samples, or call .eval() to normalize with the running statistics (or "
                    "choose another one_value_per_channel policy)."
                )
            if self.one_value_per_channel == "running_stats":
                return self._with_running_stats(input, weight, bias, act)
            update = False  # "skip_update"
        rmax, dmax = self._renorm_limits()
        momentum = self._momentum_for_this_batch() if update else 0.0
        return functional.batch_normalize(
            input, statistics, self.running_mean, self.running_var, weight, bias, momentum, self.eps, rmax, dmax, act
        )

    def _statistics(self, input, mask) -> Statistics:
        """How the batch statistics are taken: over this batch (``normlab.nn.sync``: every rank's)."""
        return Statistics(input, functional.batch_dims(input), mask)

    def _renorm_limits(self) -> tuple[float, float]:
        """The clipping limits ``(rmax, dmax)`` of batch renormalization; (1, 0) is batch norm."""
        return 1.0, 0.0

    def _restoring_running_stats(self, step, *args) -> torch.Tensor:
        """``step(*args)``, leaving the running statistics as they were if it raises or would make
        them non-finite. (A function, not a context manager: torch 2.4's dynamo cannot trace one.)"""
        if not (self.training and self.track_running_stats) or torch.compiler.is_compiling():
            return step(*args)
        state = (self.running_mean, self.running_var, self.num_batches_tracked)
        before = [t.clone() for t in state]
        try:
            output = step(*args)
            if self.check_finite:
                self._refuse_non_finite_update()
        except BaseException:
            with torch.no_grad():
                for t, b in zip(state, before):
                    t.copy_(b)
            raise
        return output

    def _refuse_non_finite_update(self) -> None:
        """Raise if this step made the running statistics non-finite."""
        finite = torch.isfinite(torch.stack((self.running_mean, self.running_var)))
        if bool(finite.all()):
            return
        channels = torch.nonzero(~finite.all(0)).flatten().tolist()
        shown = ", ".join(map(str, channels[:8])) + (", ..." if len(channels) > 8 else "")
        raise FloatingPointError(
            f"{self._name}: the batch statistics of channel(s) {shown} are not finite: the input "
            "holds NaN or Inf. The running statistics were left as they were. Look for what "
            "produced the non-finite values upstream, or set check_finite = False on this layer "
            "to let them through as torch does."
        )

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
        frozen = [name for name, on in (("statistics", self.frozen_statistics), ("affine", self.frozen_affine)) if on]
        return extra + (f", frozen={'+'.join(frozen)}" if frozen else "")


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


class BatchNorm1d(_BatchNorm):
    """Batch normalization of a 2-D ``(N, C)`` or 3-D ``(N, C, L)`` input; see :class:`_BatchNorm`."""

    _layouts = LAYOUTS_1D


class BatchNorm2d(_BatchNorm):
    """Batch normalization of a 4-D ``(N, C, H, W)`` input; see :class:`_BatchNorm`."""

    _layouts = LAYOUTS_2D


class BatchNorm3d(_BatchNorm):
    """Batch normalization of a 5-D ``(N, C, D, H, W)`` input; see :class:`_BatchNorm`."""

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
    resets it along with the statistics, restarting the warm-up when it is needed again.
    Hence ``track_running_stats=True`` is required.
    """

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

    def _renorm_limits(self) -> tuple[float, float]:
        return self.limits()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_steps={self.warmup_steps}, "
            f"rmax_full_at={self.rmax_full_at}, dmax_full_at={self.dmax_full_at}"
        )


class BatchRenorm1d(_BatchRenorm):
    """Batch renormalization of a 2-D ``(N, C)`` or 3-D ``(N, C, L)`` input; see :class:`_BatchRenorm`."""

    _layouts = LAYOUTS_1D


class BatchRenorm2d(_BatchRenorm):
    """Batch renormalization of a 4-D ``(N, C, H, W)`` input; see :class:`_BatchRenorm`."""

    _layouts = LAYOUTS_2D


class BatchRenorm3d(_BatchRenorm):
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
    """

    _layouts = ANY_LAYOUT

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
        if not isinstance(virtual_batch_size, int) or virtual_batch_size < 1:
            raise ValueError(f"{self._name}: virtual_batch_size must be a positive int, got {virtual_batch_size!r}")
        self.virtual_batch_size = virtual_batch_size

    def _normalize_batch(self, input, mask, weight, bias, act) -> torch.Tensor:
        size = self.virtual_batch_size
        if input.shape[0] <= size:
            return super()._normalize_batch(input, mask, weight, bias, act)
        masks = [None] * input.shape[0] if mask is None else mask.split(size)
        return torch.cat([
            super(GhostBatchNorm, self)._normalize_batch(x, m, weight, bias, act)
            for x, m in zip(input.split(size), masks)
        ])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"


# --- frozen batch norm ---------------------------------------------------------------------------


class FrozenBatchNorm(nn.Module):
    r"""Batch norm with fixed statistics and affine parameters, in training as in eval:

    .. math:: y = \text{weight} \, (x - \text{running\_mean}) / \sqrt{\text{running\_var} + \epsilon} + \text{bias}

    As torchvision's ``FrozenBatchNorm2d`` (``torchvision.ops.misc``): ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` are buffers, so nothing is trained or updated;
    a batch norm's ``state_dict`` (torch's or normlab's) loads into it, its
    ``num_batches_tracked`` dropped. It accepts any ``(N, C, *)`` input of rank 2 to 5.
    ``normlab.freeze_batchnorm(model)`` puts one in place of each batch norm of a model,
    the usual way to fine-tune with batches too small for batch statistics (detection
    backbones). To keep a layer's parameters and merely stop it, see
    :meth:`_BatchNorm.freeze`.
    """

    _layouts = ANY_LAYOUT
    # the input and checkpoint checks of the other layers
    _name = NormBase._name
    _check_input = NormBase._check_input
    _check_channels = NormBase._check_channels

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"FrozenBatchNorm: num_features must be a positive int, got {num_features!r}")
        if eps < 0:
            raise ValueError(f"FrozenBatchNorm: eps must be non-negative, got {eps}")
        self.num_features, self.eps = num_features, eps
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """A FrozenBatchNorm computing ``bn``'s current inference map (torch's or normlab's batch norm)."""
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"FrozenBatchNorm: {bn} has no running statistics (track_running_stats=False) to freeze")
        frozen = cls(bn.num_features, bn.eps, device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
            if bn.bias is not None:
                frozen.bias.copy_(bn.bias)
        return frozen.train(bn.training)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        check_checkpoint_shapes(self._name, self, state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        return functional.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
