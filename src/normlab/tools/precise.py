"""Recompute batch-norm running statistics exactly over a set of batches.

The running statistics a model carries out of training are exponential averages of
batch statistics taken while the weights were still moving. :func:`precise_batchnorm`
("precise BN", Wu & Johnson 2021) replaces them by the exact statistics of what each
batch norm sees over the given data; :func:`adapt_batchnorm` (AdaBN, Li et al. 2016)
does the same on data from a new domain at test time.

Both watch the input of every batch norm with a forward pre-hook. Each batch gives,
per channel, its count ``n_b``, mean ``m_b`` and sum of squared deviations ``S_b``
(in float64); batches are pooled exactly by the law of total variance (Chan et al.'s
parallel update)::

    n = n_a + n_b,   d = m_b - m_a,   m = m_a + d * n_b / n,   S = S_a + S_b + d^2 * n_a * n_b / n

so batches of unequal size weigh by their counts, unlike an average of per-batch
variances. At the end ``running_mean = m`` and ``running_var = S / (n - 1)``
(unbiased, as the running variance is everywhere in PyTorch).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from .._progress import progress as progress_bar
from ._common import is_batchnorm, label, preserved, run_batch, uses_batch_statistics

__all__ = ["adapt_batchnorm", "precise_batchnorm"]


class _Pooled:
    """Count, mean and sum of squared deviations per channel, pooled over batches in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = self.m2 = None

    def add(self, x: torch.Tensor) -> None:
        values = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
        n = values.shape[1]
        if n == 0:
            return
        mean = values.mean(1)
        m2 = (values - mean[:, None]).square().sum(1)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total


def forward_hint(batch, forward) -> str | None:
    """How to pass ``forward=``, when ``batch`` is a dict fed without it (a model does not take one as it comes)."""
    inputs = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    if forward is not None or not isinstance(inputs, Mapping):
        return None
    return f"pass forward=lambda model, batch: model(batch[{next(iter(inputs), 'input')!r}]) to say how a batch is fed"


def feed(what: str, model: nn.Module, batch, forward=None):
    """:func:`run_batch`, with a clear error for a dict batch the model cannot take without ``forward=``."""
    try:
        return run_batch(model, batch, forward)
    except Exception as e:
        hint = forward_hint(batch, forward)
        if hint is None:
            raise
        keys = ", ".join(map(str, batch[0] if isinstance(batch, (list, tuple)) else batch))
        raise TypeError(f"{what}: the model raised {type(e).__name__} on a batch that is a dict (keys: {keys}); {hint}") from e


def _recompute(what, model, batches, num_batches, forward, progress, only_batchnorm_trains) -> nn.Module:
    # the batch norms that keep running statistics of what they normalize with: not frozen ones
    layers = {
        name: m
        for name, m in model.named_modules()
        if is_batchnorm(m) and getattr(m, "track_running_stats", False) and m.running_mean is not None
        and uses_batch_statistics(m)
    }
    if not layers:
        raise ValueError(f"{what}: the model has no batch norm with running statistics to recompute")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"{what}: num_batches must be at least 1, got {num_batches}")
    pooled = {m: _Pooled() for m in layers.values()}

    def watch(module, args, kwargs):
        if len(args) != 1 or kwargs:
            name = next(n for n, m in layers.items() if m is module)
            raise NotImplementedError(
                f"{what}: {label(name, module)} was called with more than its input (a mask?); "
                "exact statistics of such calls are not supported"
            )
        pooled[module].add(args[0])

    total = num_batches if num_batches is not None else (len(batches) if hasattr(batches, "__len__") else None)
    seen = 0
    handles = [m.register_forward_pre_hook(watch, with_kwargs=True) for m in layers.values()]
    try:
        with preserved(model), torch.no_grad():
            if only_batchnorm_trains:
                model.eval()
                for m in layers.values():
                    m.train()
            else:
                model.train()
            for batch in progress_bar(itertools.islice(batches, num_batches), total, what, progress):
                feed(what, model, batch, forward)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError(f"{what}: batches is empty")

    unseen = []
    with torch.no_grad():
        for name, m in layers.items():
            p = pooled[m]
            if p.count < 2:
                unseen.append(label(name, m))
                continue
            m.running_mean.copy_(p.mean)
            if m.running_var is not None:  # (mean-only batch norm keeps none)
                m.running_var.copy_(p.m2 / (p.count - 1))
    if unseen:
        warnings.warn(
            f"{what}: {', '.join(unseen)} saw fewer than 2 values per channel in {seen} batch(es); "
            "their running statistics were left as they were",
            stacklevel=3,
        )
    return model


def precise_batchnorm(
    model: nn.Module, batches, num_batches: int | None = None, *, forward=None, progress: bool | None = None
) -> nn.Module:
    """Set each batch norm's running statistics to the exact statistics of its input over ``batches``.

    The model runs in training mode under ``torch.no_grad()``, so each batch norm sees
    what it sees in training (normalized by batch statistics upstream, dropout on):
    the quantity its running averages estimate. ``batches`` is any iterable (a
    DataLoader); a batch is fed as ``torch.optim.swa_utils.update_bn`` does (a tensor,
    or the first element of a tuple), or through ``forward(model, batch)``. At most
    ``num_batches`` are used (all by default). ``progress`` draws a bar on stderr
    (default: when stderr is a terminal).

    Only ``running_mean`` and ``running_var`` change, and only for batch norms that
    track running statistics, normalize with batch statistics in training (not those
    frozen with ``freeze("statistics")``, whose statistics are fixed by choice) and were
    reached. Everything else is put back: every
    other buffer (including ``num_batches_tracked``, which counts training steps and
    is left as it was, so ``momentum=None`` averaging continues from the same count),
    each module's training flag, the RNG state; parameters, their gradients and any
    optimizer are not touched. Returns ``model``, modified in place.
    """
    return _recompute("precise_batchnorm", model, batches, num_batches, forward, progress, False)


def adapt_batchnorm(
    model: nn.Module, batches, num_batches: int | None = None, *, forward=None, progress: bool | None = None
) -> nn.Module:
    """AdaBN (Li et al. 2016): re-estimate each batch norm's statistics on data from a new domain.

    Give unlabelled batches from the target domain; afterwards the model normalizes
    with the target domain's statistics. Same machinery and guarantees as
    :func:`precise_batchnorm`, with one difference: only the batch norms run in
    training mode (to normalize by the target batch's statistics on the way through),
    every other module runs as at inference (dropout off), since this happens at test
    time on a model already trained.
    """
    return _recompute("adapt_batchnorm", model, batches, num_batches, forward, progress, True)
