"""Find the classic batch-norm mistakes in a model, each with a one-line fix.

:func:`doctor` reads the model's configuration and runs one forward pass in training
mode on an example batch (under ``torch.no_grad()``; every buffer, training flag and
the RNG state are put back afterwards), watching each batch norm's input with hooks.
What it reports, by code:

``bn-training-mode``  batch norms in training mode while you say you are evaluating:
                      outputs depend on the rest of the batch and the running
                      statistics keep moving.
``small-batch``       the example batch gives a batch norm fewer than 8 samples or
                      fewer than 32 values per channel (at 32 values the batch
                      variance is off by about 25% from one batch to the next;
                      Wu & He 2018 measure ResNet-50 at 23.6% error with 32 samples
                      per batch, 27.3% with 4 and 34.7% with 2). Frozen batch
                      norms, which use their running statistics, are left out.
``bias-before-bn``    a Conv/Linear with a bias feeds a batch norm, which subtracts
                      the channel mean and with it the bias: wasted parameters.
``bn-after-dropout``  a batch norm directly after a Dropout with p > 0: its running
                      variance is learnt with dropout on and used with it off
                      ("variance shift", Li et al. 2019).
``stats-mismatch``    the example batch's statistics are far from the running ones:
                      in the median channel, the batch mean more than one running
                      standard deviation away, or the batch variance more than 4x
                      off; what the model was trained on is not what it sees.
                      Running statistics still at their initial mean 0 and
                      variance 1 (an untrained layer) count only with
                      ``evaluating=True``.
``dead-gamma``        channels with ``|gamma| < 1e-3``: the normalized input has unit
                      variance, so these output their bias whatever the input.
``recurrent-bn``      a batch norm called more than once per forward (one module
                      applied at several time steps): its statistics mix all steps.
``keras-momentum``    ``momentum >= 0.5``. PyTorch's momentum is the weight of the new
                      batch (default 0.1); Keras's is the weight of the old average
                      (default 0.99). At 0.5 and above the running average forgets
                      everything older than about two batches, which nobody asks for
                      on purpose: it is Keras's 0.9 or 0.99 passed to PyTorch.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from ._common import has_running_stats, is_batchnorm, preserved, run_batch, uses_batch_statistics

__all__ = ["Finding", "doctor"]

MIN_SAMPLES = 8
MIN_VALUES = 32
MEAN_SHIFT = 1.0  # running standard deviations
VARIANCE_RATIO = 4.0
DEAD_GAMMA = 1e-3
KERAS_MOMENTUM = 0.5


@dataclass(frozen=True)
class Finding:
    code: str  # what kind of problem, e.g. "bias-before-bn"
    layer: str  # qualified name of the layer concerned ("(model)" for the whole model)
    message: str
    fix: str  # one line

    def __str__(self) -> str:
        return f"[{self.code}] {self.layer}: {self.message}\n    fix: {self.fix}"


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def doctor(model: nn.Module, example_batch, *, evaluating: bool = False, forward=None) -> list[Finding]:
    """Inspect ``model`` on ``example_batch`` and return what looks wrong with its batch norms.

    ``example_batch`` is fed as in :func:`normlab.precise_batchnorm` (a tensor, or the
    first element of a tuple; ``forward(model, batch)`` for anything else); give one
    batch as large as your training batches and from your real data, since the
    ``small-batch`` and ``stats-mismatch`` checks read its statistics. Pass
    ``evaluating=True`` when the model is about to be used for evaluation. The model
    is left exactly as it was.
    """
    layers = [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]
    findings: list[Finding] = []

    if evaluating and model.training:
        findings.append(Finding(
            "bn-training-mode", "(model)",
            f"the model is in training mode, so its {len(layers)} batch norm(s) normalize with the statistics of "
            "each batch and update their running statistics",
            "call model.eval() before evaluating (and model.train() before training again)",
        ))  # fmt: skip
    elif evaluating:
        training = [name for name, m in layers if m.training]
        if training:
            findings.append(Finding(
                "bn-training-mode", training[0],
                f"{_names(training)} are in training mode inside a model in eval mode",
                "call model.eval() after anything that sets these layers back to training mode",
            ))  # fmt: skip

    for name, m in layers:
        momentum = getattr(m, "momentum", None)
        if momentum is not None and momentum >= KERAS_MOMENTUM:
            findings.append(Finding(
                "keras-momentum", name,
                f"momentum={momentum}: PyTorch's momentum is the weight of the new batch, so the running statistics "
                f"follow the last {1 / momentum:.1f} batch(es); this looks like Keras's momentum (weight of the old average)",
                f"use momentum={1 - momentum:.3g} (1 - Keras's value)",
            ))  # fmt: skip
        gamma = getattr(m, "weight", None)
        if gamma is not None:
            dead = int((gamma.detach().abs() < DEAD_GAMMA).sum())
            if dead:
                findings.append(Finding(
                    "dead-gamma", name,
                    f"{dead} of {gamma.numel()} channels have |gamma| < {DEAD_GAMMA:g}: they output their bias "
                    "whatever the input (expected only at the start of training with zero-initialized residual branches)",
                    "prune these channels, or drop weight decay on the batch-norm parameters",
                ))  # fmt: skip

    findings += _watch_forward(model, layers, example_batch, forward, evaluating)
    return findings


def _watch_forward(model, layers, example_batch, forward, evaluating) -> list[Finding]:
    """The checks that need a forward pass: one train-mode forward with hooks, state put back."""
    names = {m: name for name, m in layers}
    producers: dict[int, tuple] = {}  # id(output) -> (weakref to it, name, module): who made a tensor
    calls: Counter = Counter()
    findings: list[Finding] = []
    small: list[tuple[str, int, int]] = []  # (layer, samples, values per channel)

    def produced(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                producers[id(output)] = (weakref.ref(output), name, module)

        return hook

    def watch(bn, args):
        name = names[bn]
        calls[name] += 1
        x = args[0] if args else None
        if calls[name] > 1 or not isinstance(x, torch.Tensor) or x.dim() < 2 or x.numel() == 0:
            return  # the statistics of the first call with a real batch are what is checked
        ref, src_name, src = producers.get(id(x), (None, None, None))
        if ref is not None and ref() is x:
            findings.extend(_source_findings(name, src_name, src, x))
        samples, values = x.shape[0], x.numel() // x.shape[1]
        if (samples < MIN_SAMPLES or values < MIN_VALUES) and uses_batch_statistics(bn):
            small.append((name, samples, values))
        findings.extend(_statistics_findings(name, bn, x, evaluating))

    watched = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.dropout._DropoutNd)
    handles = [m.register_forward_hook(produced(n)) for n, m in model.named_modules() if isinstance(m, watched)]
    handles += [m.register_forward_pre_hook(watch) for _, m in layers]
    try:
        with preserved(model), torch.no_grad():
            model.train()
            run_batch(model, example_batch, forward)
    finally:
        for h in handles:
            h.remove()

    findings += _small_batch(small)
    for name, n in calls.items():
        if n > 1:
            findings.append(Finding(
                "recurrent-bn", name,
                f"called {n} times in one forward pass: its batch statistics and running statistics mix all the calls "
                "(time steps), whose distributions differ",
                "use one batch norm per time step (Cooijmans et al. 2017) or LayerNorm; ignore if the module is "
                "shared on purpose (a siamese network)",
            ))  # fmt: skip
    return findings


def _source_findings(name: str, src_name: str, src: nn.Module, x: torch.Tensor) -> list[Finding]:
    if isinstance(src, nn.modules.dropout._DropoutNd) and src.p > 0:
        return [Finding(
            "bn-after-dropout", name,
            f"directly after {src_name} ({type(src).__name__}(p={src.p})): the running variance is learnt with "
            "dropout on and used with it off, a variance shift that hurts inference (Li et al. 2019)",
            f"move {src_name} after the last batch norm, or use it only before the classifier",
        )]  # fmt: skip
    # A Linear's bias is per channel of the batch norm only when its output is (N, features).
    per_channel = not isinstance(src, nn.Linear) or x.dim() == 2
    if isinstance(src, (nn.modules.conv._ConvNd, nn.Linear)) and src.bias is not None and per_channel:
        return [Finding(
            "bias-before-bn", src_name,
            f"has a bias and feeds {name}, which subtracts each channel's mean and with it the bias: "
            f"{src.bias.numel()} parameters that do nothing",
            f"build {src_name} with bias=False",
        )]  # fmt: skip
    return []


def _small_batch(small: list[tuple[str, int, int]]) -> list[Finding]:
    """One finding for every layer whose batch statistics are taken over too few values, named by the worst."""
    if not small:
        return []
    name, samples, values = min(small, key=lambda s: (s[2], s[1]))
    others = f" ({len(small)} batch norms in all: {_names([s[0] for s in small])})" if len(small) > 1 else ""
    return [Finding(
        "small-batch", name,
        f"batch statistics over {samples} sample(s), {values} value(s) per channel{others}: they vary a lot from "
        f"batch to batch (relative error of the variance about {math.sqrt(2 / max(values - 1, 1)):.0%})",
        "use larger batches, GhostBatchNorm/BatchRenorm, or GroupNorm/LayerNorm, which do not depend on the batch",
    )]  # fmt: skip


def _statistics_findings(name: str, bn: nn.Module, x: torch.Tensor, evaluating: bool) -> list[Finding]:
    if not has_running_stats(bn):
        return []
    values64 = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
    mean, var = values64.mean(1), values64.var(1, unbiased=False)
    running_mean, running_var = bn.running_mean.double(), bn.running_var.double()
    shift = ((mean - running_mean).abs() / (running_var + bn.eps).sqrt()).median().item()
    ratio = ((var + bn.eps) / (running_var + bn.eps)).median().item()
    fresh = bool((bn.running_mean == 0).all() and (bn.running_var == 1).all())
    if fresh and not evaluating:
        return []  # a layer that has not been trained yet: nothing to compare
    findings = []
    if shift > MEAN_SHIFT or not 1 / VARIANCE_RATIO <= ratio <= VARIANCE_RATIO:
        findings.append(Finding(
            "stats-mismatch", name,
            f"in the median channel the example batch's mean is {shift:.2g} running standard deviations from the "
            f"running mean and its variance {ratio:.2g}x the running variance"
            + (" (the running statistics were never updated: mean 0, variance 1)" if fresh else ""),
            "recompute the running statistics on your data (normlab.precise_batchnorm), or check that inference "
            "inputs are preprocessed as in training",
        ))  # fmt: skip
    return findings
