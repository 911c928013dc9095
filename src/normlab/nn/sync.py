"""Synchronized batch normalization over ``torch.distributed``: statistics over every rank's batch.

:class:`SyncBatchNorm` and :class:`SyncBatchRenorm` are batch norm and batch
renormalization whose batch statistics are taken over the union of the batches of all
ranks of a process group. Nothing else differs, so each is its local layer with one
method replaced, ``_statistics``: the normalization and its gradient
(:class:`normlab.autograd.Normalize`), renormalization, masks, freezing and the running
statistics are the local layers' own code. Both are instances of ``torch.nn.SyncBatchNorm``.

Forward: each rank takes the count ``n_k``, the mean and the sum of squared deviations
about its own mean ``M2_k`` of its batch (the shifted two-pass of ``normlab.autograd``),
one ``all_gather`` shares them, and every rank merges them exactly (Chan, Golub &
LeVeque's parallel variance), in float64::

    n = sum n_k,   mean = sum n_k mean_k / n,   M2 = sum M2_k + sum n_k (mean_k - mean)^2

so that nothing cancels however far a rank's mean lies from the global one. Backward:
one ``all_reduce`` of the per-channel sums of ``g`` and ``g * x_hat``, the two sums the
gradient through the statistics needs; parameter gradients stay local (DDP averages
them, as with torch's SyncBatchNorm). Before the gather, one ``all_gather`` of the
value counts decides the one-value-per-channel check on the global count; a rank that
refuses its batch (a wrong channel count) shares a count of -1 there and raises its own
error, and every other rank raises :class:`PeerRefused` naming it, rather than hang.

Every rank updates its running statistics with the same global values, so they stay
identical. Ranks may hold batches of different sizes, including empty ones: an empty
rank contributes ``n = 0`` but must still run the layer, forward and backward (make its
loss depend on the output), since every rank takes part in each collective.

Outside an initialized process group, or in a group of one rank, these layers are
plain batch norm and batch renormalization, as torch's SyncBatchNorm falls back to
batch norm. In eval mode they use the running statistics and communicate nothing.
Unlike torch's they run on the CPU (gloo) as on GPUs (NCCL). Double backward is not
supported (the statistics come from other processes). torch's own
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` rebuilds them as torch's SyncBatchNorm
(GPU only, none of normlab's options); normlab's :func:`convert_sync_batchnorm` leaves them.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.distributed as dist
from torch import nn

from ..autograd import Moments, Statistics
from ._swap import replace_modules
from .activated import BatchNormAct
from .batchnorm import ANY_LAYOUT, _BatchNorm, _BatchRenorm

__all__ = ["PeerRefused", "SyncBatchNorm", "SyncBatchNormAct", "SyncBatchRenorm", "SynchronizedStatistics",
           "convert_sync_batchnorm", "merge_moments", "rebuilt"]


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


class PeerRefused(RuntimeError):
    """Another rank of the process group refused its batch before the statistics were shared."""


REFUSED = -1  # the count a rank shares in place of its own when it refuses its batch


def gather_counts(local_count: int, group, device) -> list[int]:
    """Every rank's value count (``REFUSED`` from a rank that refused its batch), by rank."""
    count = torch.tensor([local_count], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, count, group=group)
    return [int(c) for c in counts]


class SynchronizedStatistics(Statistics):
    """:class:`normlab.autograd.Statistics` over the batches of every rank of ``group``.

    ``layer`` (optional) is told when this rank reaches the first collective (its ``_joined``),
    and names the layer in messages."""

    differentiable = False

    def __init__(self, x: torch.Tensor, dims, mask, group, layer=None) -> None:
        self.group, self.device, self.layer = group, x.device, layer
        super().__init__(x, dims, mask)

    def _total_count(self, local_count: int) -> int:
        if self.layer is not None:
            self.layer._joined = True
        counts = gather_counts(local_count, self.group, self.device)
        refused = [rank for rank, n in enumerate(counts) if n == REFUSED]
        if refused:
            name = "SyncBatchNorm" if self.layer is None else self.layer._name
            raise PeerRefused(
                f"{name}: rank {', '.join(map(str, refused))} of the process group refused its batch before the "
                f"statistics were shared (that rank's own error says why); rank {dist.get_rank(self.group)} stops "
                "here rather than wait for it"
            )
        return sum(counts)

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

    def _statistics(self):
        group = self._group() if self.training else None
        return Statistics if group is None else functools.partial(SynchronizedStatistics, group=group, layer=self)

    def _normalize(self, input, mask, act):
        # A rank that refuses its batch (a wrong shape, say) before the first collective still takes
        # part in it, sharing REFUSED as its count: the other ranks then raise PeerRefused naming it,
        # where they would otherwise wait for it and die with the transport's "connection closed".
        # Only where there is a group to tell, and outside a trace (torch.compile, export, fx),
        # which records no collective of its own and, in torch 2.4, cannot set the flag.
        tracing = isinstance(input, torch.fx.Proxy) or torch.compiler.is_compiling()
        group = self._group() if self.training and not tracing else None
        if group is None:
            return super()._normalize(input, mask, act)
        self._joined = False
        try:
            return super()._normalize(input, mask, act)
        except Exception:
            if not self._joined:
                device = input.device if isinstance(input, torch.Tensor) else next(self.buffers()).device
                gather_counts(REFUSED, group, device)
            raise

    def synchronized(self, process_group=None) -> nn.Module:
        return self


class SyncBatchNorm(_Synchronized, _BatchNorm, nn.SyncBatchNorm):
    """Batch norm with statistics over every rank of ``process_group`` (default: the world).

    Drop-in for ``torch.nn.SyncBatchNorm`` (same arguments and ``state_dict``; an instance
    of it), for any ``(N, C, *)`` input; see the module docstring for how ranks combine,
    and :class:`normlab.nn.batchnorm._BatchNorm` for everything else.
    """

    _scriptable = False  # as torch's SyncBatchNorm


class SyncBatchRenorm(_Synchronized, _BatchRenorm, nn.SyncBatchNorm):
    """Batch renormalization with statistics over every rank of ``process_group``.

    :class:`normlab.nn.batchnorm._BatchRenorm` (its keywords: ``rmax``, ``dmax`` and the
    schedule) with the batch statistics of :class:`SyncBatchNorm`; any ``(N, C, *)`` input.
    """


class SyncBatchNormAct(_Synchronized, BatchNormAct, nn.SyncBatchNorm):
    """:class:`normlab.nn.BatchNormAct` with the batch statistics of :class:`SyncBatchNorm`: what
    :func:`convert_sync_batchnorm` makes of a ``BatchNormAct``. Arguments: ``num_features``,
    then torch's SyncBatchNorm arguments; the activation's are keywords (``activation``,
    ``negative_slope``, ``alpha``, ``inplace_abn``), as BatchNormAct's."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, *,
                 activation: str = "relu", **kwargs) -> None:
        BatchNormAct.__init__(self, num_features, activation, eps, momentum, affine, track_running_stats, device,
                              dtype, **kwargs)
        self.process_group = process_group


def rebuilt(bn: nn.Module, cls: type, process_group=None) -> nn.Module:
    """A ``cls`` (a synchronized layer) with ``bn``'s configuration, holding ``bn``'s very parameters and
    buffers and its options (freeze, policies, renormalization schedule), in ``bn``'s training mode."""
    sync = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group,
               device="meta")  # nothing allocated: every tensor is replaced below
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(sync, name, getattr(bn, name))
    # options: every public plain attribute (eps, momentum, freeze state, renorm schedule, ...)
    for name, value in vars(bn).items():
        if not name.startswith("_") and name not in ("training", "process_group"):
            setattr(sync, name, value)
    if hasattr(bn, "qconfig"):
        sync.qconfig = bn.qconfig
    return sync.train(bn.training)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Make every batch norm of ``module`` synchronized, in place; returns the module.

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, but each normlab layer says
    what its synchronized form is (its ``synchronized()`` method): batch norms become
    :class:`SyncBatchNorm` and ``BatchRenorm1d/2d/3d`` :class:`SyncBatchRenorm`, keeping
    the very parameter objects (an optimizer built before keeps working), the same
    buffers, training mode and options (freeze, one-value policy, renorm schedule);
    ``BatchNormAct`` keeps its activation; :class:`normlab.nn.GhostBatchNorm` (local by
    design) and :class:`normlab.nn.FrozenBatchNorm` (no batch statistics) stay as they are.
    torch's batch norms (and their subclasses that keep torch's forward) become
    :class:`SyncBatchNorm`. A layer used at several places is converted once and stays
    shared. When ``module`` is itself a batch norm the new layer is returned.
    """

    left: dict[str, list[str]] = {}

    def convert(m: nn.Module, name: str) -> nn.Module | None:
        if callable(getattr(m, "synchronized", None)):
            new = m.synchronized(process_group)
            return None if new is m else new
        if type(m) is nn.SyncBatchNorm or (isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(
                m, nn.modules.lazy.LazyModuleMixin) and type(m).forward is nn.modules.batchnorm._BatchNorm.forward):
            return rebuilt(m, SyncBatchNorm, process_group)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # a subclass with a forward of its own
            left.setdefault(type(m).__qualname__, []).append(name or "(model)")
        return None

    module = replace_modules(module, convert)
    if left:
        warnings.warn(
            "convert_sync_batchnorm: left unsynchronized the batch norms whose class has a forward of its own, which "
            "a SyncBatchNorm would not compute: " + "; ".join(f"{cls} at {', '.join(names)}" for cls, names in
                                                               left.items()),
            stacklevel=2,
        )
    return module
