"""Batch normalization layers (Ioffe & Szegedy 2015), drop-in for torch.nn.BatchNorm1d/2d/3d.

The three classes differ only in the input layouts they accept; everything else lives
in :class:`_BatchNorm` and, below it, :class:`normlab.nn._base.NormBase`.
"""

from __future__ import annotations

import torch

from .. import functional
from ._base import NormBase

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(NormBase):
    r"""Batch normalization over dim 1 of the input.

    Training:  :math:`y = \gamma \, (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`, with the
    mean and biased variance of each channel over the batch (and every axis after dim 1),
    and the running statistics updated as ``running = (1 - momentum) * running +
    momentum * batch`` with the unbiased variance (``momentum=None``: cumulative average).

    Evaluation: the same map with the running statistics, an affine map per channel.
    With ``track_running_stats=False`` the batch statistics are used in both modes.

    Arguments, parameters, buffers and ``state_dict`` keys are torch.nn's.

    Non-finite inputs: NaN or Inf in a channel make that channel's batch statistics,
    and so its whole output, non-finite, as in torch. What normlab adds: a training
    step that would write non-finite values into the running statistics raises
    ``FloatingPointError`` naming the layer and the channels, and leaves the running
    statistics as they were. Set ``check_finite = False`` (on a layer or on the class)
    to skip that check, which on a GPU waits for the device once per call.
    """

    check_finite: bool = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._normalize(input, functional.batch_norm)

    def _normalize(self, input: torch.Tensor, batch_norm) -> torch.Tensor:
        """The forward pass, with ``batch_norm`` (``functional.batch_norm``'s signature) doing the math."""
        self._check_input(input)
        # Batch statistics in training, and in eval when there are no running ones.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if use_batch_stats and functional.values_per_channel(input) == 1:
            raise ValueError(
                f"{self._name}: training needs more than one value per channel to compute batch "
                f"statistics, got an input of shape {tuple(input.shape)}. Use a batch of at least "
                "2 samples, or call .eval() to normalize with the running statistics."
            )
        momentum = self._momentum_for_this_batch()
        # Running statistics are passed when they are read (eval) or written (tracked training).
        passed = not self.training or self.track_running_stats
        running_mean = self.running_mean if passed else None
        running_var = self.running_var if passed else None
        guard = (
            self.check_finite
            and self.training
            and running_mean is not None
            and not torch.compiler.is_compiling()
        )
        if guard:
            before = torch.cat((running_mean, running_var))
        y = batch_norm(
            input, running_mean, running_var, self.weight, self.bias, use_batch_stats, momentum, self.eps
        )
        if guard:
            self._refuse_non_finite_update(before)
        return y

    @torch.no_grad()
    def _refuse_non_finite_update(self, before: torch.Tensor) -> None:
        """Undo this step's update of the running statistics and raise if it made them non-finite."""
        finite = torch.isfinite(torch.cat((self.running_mean, self.running_var)))
        if bool(finite.all()):
            return
        self.running_mean.copy_(before[: self.num_features])
        self.running_var.copy_(before[self.num_features :])
        self.num_batches_tracked.sub_(1)
        bad = ~(finite[: self.num_features] & finite[self.num_features :])
        channels = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(map(str, channels[:8])) + (", ..." if len(channels) > 8 else "")
        raise FloatingPointError(
            f"{self._name}: the batch statistics of channel(s) {shown} are not finite: the input "
            "holds NaN or Inf. The running statistics were left as they were. Look for what "
            "produced the non-finite values upstream, or set check_finite = False on this layer "
            "to let them through as torch does."
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization of a 2-D ``(N, C)`` or 3-D ``(N, C, L)`` input; see :class:`_BatchNorm`."""

    _layouts = {2: "(N, C)", 3: "(N, C, L)"}


class BatchNorm2d(_BatchNorm):
    """Batch normalization of a 4-D ``(N, C, H, W)`` input; see :class:`_BatchNorm`."""

    _layouts = {4: "(N, C, H, W)"}


class BatchNorm3d(_BatchNorm):
    """Batch normalization of a 5-D ``(N, C, D, H, W)`` input; see :class:`_BatchNorm`."""

    _layouts = {5: "(N, C, D, H, W)"}
