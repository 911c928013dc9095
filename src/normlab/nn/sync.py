"""Synchronized batch normalization over ``torch.distributed``: statistics over every rank's batch.

:class:`SyncBatchNorm` and :class:`SyncBatchRenorm` are batch norm and batch
renormalization whose batch statistics are taken over the union of the batches of all
ranks of a process group. Nothing else differs, so each is its local layer with one
method replaced, ``_statistics``: the normalization and its gradient
(:class:`normlab.autograd.Normalize`), renormalization, masks, freezing and the running
statistics are the local layers' own code.

Forward: each rank takes the count ``n_k``, the mean and the sum of squared deviations
about its own mean ``M2_k`` of its batch (the shifted two-pass of ``normlab.autograd``),
one ``all_gather`` shares them, and every rank merges them exactly (Chan, Golub &
LeVeque's parallel variance), in float64::

    n = sum n_k,   mean = sum n_k mean_k / n,   M2 = sum M2_k + sum n_k (mean_k - mean)^2

so that nothing cancels however far a rank's mean lies from the global one. Backward:
one ``all_reduce`` of the per-channel sums of ``g`` and ``g * x_hat``, the two sums the
gradient through the statistics needs; parameter gradients stay local (DDP averages
them, as with torch's SyncBatchNorm). Before the gather, one ``all_reduce`` of the
value count decides the one-value-per-channel check on the global count.

Every rank updates its running statistics with the same global values, so they stay
identical. Ranks may hold batches of different sizes, including empty ones: an empty
rank contributes ``n = 0`` but must still run the layer, forward and backward (make its
loss depend on the output), since every rank takes part in each collective.

Outside an initialized process group, or in a group of one rank, these layers are
plain batch norm and batch renormalization, as torch's SyncBatchNorm falls back to
batch norm. In eval mode they use the running statistics and communicate nothing.
Unlike torch's they run on the CPU (gloo) as on GPUs (NCCL). Double backward is not
supported (the statistics come from other processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .. import functional
from ..autograd import Moments, Statistics
from ._swap import replace_modules
from .batchnorm import ANY_LAYOUT, FrozenBatchNorm, GhostBatchNorm, _BatchNorm, _BatchRenorm

__all__ = ["SyncBatchNorm", "SyncBatchRenorm", "SynchronizedStatistics", "convert_sync_batchnorm", "merge_moments"]


def merge_moments(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor):
    """Mean and biased variance of the union of parts given each part's count, mean and M2.

    ``M2`` is the sum of squared deviations about the part's own mean; parts are along
    dim 0 and may be empty (count 0). Exact: ``M2 = sum M2_k + sum n_k (mean_k - mean)^2``
    (Chan, Golub & LeVeque 1979), with no difference of large sums.
    """
    total = counts.sum(0)
    mean = (counts * means).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, m2 / total


class SynchronizedStatistics(Statistics):
    """:class:`normlab.autograd.Statistics` over the batches of every rank of ``group``."""

    differentiable = False

    def __init__(self, x: torch.Tensor, dims, mask, group) -> None:
        self.group, self.device = group, x.device
        super().__init__(x, dims, mask)

    def _total_count(self, local_count: int) -> int:
        count = torch.tensor(local_count, dtype=torch.int64, device=self.device)
        dist.all_reduce(count, group=self.group)
        return int(count)

    def _combine(self, x_c: torch.Tensor, local: Moments) -> tuple[torch.Tensor, Moments]:
        shape, dtype = local.var.shape, local.var.dtype
        shift = local.shift.double().expand(shape).reshape(-1)
        mean = shift + local.mean_shifted.double().expand(shape).reshape(-1)
        n = float(local.count)
        packed = torch.stack((torch.full_like(mean, n), mean, local.var.double().reshape(-1) * n))
        gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(gathered, packed, group=self.group)
        counts, means, m2s = torch.stack(gathered, 1)
        global_mean, var = merge_moments(counts, means, m2s)
        mean_shifted = (global_mean - shift).reshape(shape).to(dtype)
        x_c = x_c - (mean_shifted - local.mean_shifted)  # re-centre on the global mean
        return x_c, Moments(local.shift, mean_shifted, var.reshape(shape).to(dtype), self.count)

    def total(self, *sums: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = torch.cat([s.reshape(-1) for s in sums])
        dist.all_reduce(flat, group=self.group)
        return tuple(t.view_as(s) for t, s in zip(flat.split([s.numel() for s in sums]), sums))


class _Synchronized:
    """Mixin: the batch statistics of a :class:`_BatchNorm` taken over a process group.

    Takes torch's SyncBatchNorm arguments (``process_group`` before ``device``); other
    keywords go to the local layer."""

    _layouts = ANY_LAYOUT

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        **kwargs,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs)
        self.process_group = process_group

    def _group(self):
        """The process group to synchronize over, or None when there is nobody to synchronize with."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = dist.group.WORLD if self.process_group is None else self.process_group
        return group if dist.get_world_size(group) > 1 else None

    def _statistics(self, input, mask) -> Statistics:
        group = self._group() if self.training else None
        if group is None:
            return super()._statistics(input, mask)
        return SynchronizedStatistics(input, functional.batch_dims(input), mask, group)


class SyncBatchNorm(_Synchronized, _BatchNorm):
    """Batch norm with statistics over every rank of ``process_group`` (default: the world).

    Drop-in for ``torch.nn.SyncBatchNorm`` (same arguments and ``state_dict``), for any
    ``(N, C, *)`` input; see the module docstring for how ranks combine, and
    :class:`normlab.nn.batchnorm._BatchNorm` for everything else.
    """


class SyncBatchRenorm(_Synchronized, _BatchRenorm):
    """Batch renormalization with statistics over every rank of ``process_group``.

    :class:`normlab.nn.batchnorm._BatchRenorm` (its keywords: ``rmax``, ``dmax`` and the
    schedule) with the batch statistics of :class:`SyncBatchNorm`; any ``(N, C, *)`` input.
    """


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Make every batch norm of ``module`` synchronized, in place; returns the module.

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: torch's and normlab's batch
    norms (``BatchNorm1d/2d/3d``, torch's ``SyncBatchNorm``) become :class:`SyncBatchNorm`,
    normlab's ``BatchRenorm1d/2d/3d`` become :class:`SyncBatchRenorm`. The new layers hold
    the same parameter objects (an optimizer built before keeps working), the same
    buffers, training mode and options (freeze, one-value policy, renorm schedule).
    :class:`GhostBatchNorm` (local by design) and :class:`FrozenBatchNorm` (no batch
    statistics) are left as they are. When ``module`` is itself a batch norm the new layer
    is returned.
    """

    def convert(m: nn.Module, _name: str) -> nn.Module | None:
        if isinstance(m, (_Synchronized, GhostBatchNorm, FrozenBatchNorm)):
            return None
        if isinstance(m, _BatchRenorm):
            return _synchronized(m, SyncBatchRenorm, process_group)
        if isinstance(m, (_BatchNorm, nn.modules.batchnorm._BatchNorm)):
            return _synchronized(m, SyncBatchNorm, process_group)
        return None

    return replace_modules(module, convert)


def _synchronized(bn: nn.Module, cls: type, process_group) -> nn.Module:
    sync = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(sync, name, getattr(bn, name))
    # options: every public plain attribute (eps, momentum, freeze state, renorm schedule, ...)
    for name, value in vars(bn).items():
        if not name.startswith("_") and name not in ("training", "process_group"):
            setattr(sync, name, value)
    sync.training = bn.training
    return sync
