"""Find the classic batch-norm mistakes in a model, each with a one-line fix.

:func:`doctor` reads the model's configuration (and, when given, the optimizer's) and
runs one forward pass in training mode on an example batch (under ``torch.no_grad()``;
every buffer, training flag and the RNG state are put back afterwards), watching each
batch norm's input with hooks and every tensor operation with a torch function mode,
which is how it knows what a batch norm's input depends on. What it reports, by code:

From the configuration:

``bn-training-mode``     batch norms in training mode while you say you are evaluating:
                         outputs depend on the rest of the batch and the running
                         statistics keep moving.
``no-running-stats``     evaluating with batch norms built with
                         ``track_running_stats=False``: they normalize each batch with its
                         own statistics in eval too, so an output depends on the batch.
``keras-momentum``       ``momentum >= 0.5``. PyTorch's momentum is the weight of the new
                         batch (default 0.1); Keras's is the weight of the old average
                         (default 0.99). At 0.5 and above the running average forgets
                         everything older than about two batches, which nobody asks for
                         on purpose: it is Keras's 0.9 or 0.99 passed to PyTorch.
``dead-gamma``           channels with ``|gamma| < 1e-3``: the normalized input has unit
                         variance, so these output their bias whatever the input. Not
                         reported before training (running statistics still at mean 0
                         and variance 1), where gamma is its initialization: zero on
                         purpose in zero-initialized residual branches, or random.
``stats-not-frozen``     weight and bias set to ``requires_grad=False`` on a batch norm in
                         training mode: that freezes the affine parameters only; the layer
                         still normalizes with batch statistics and its running statistics
                         keep moving with every forward pass.
``norm-weight-decay``    (with ``optimizer=``) weight decay on the parameters of
                         normalization layers (He et al. 2019 leave them undecayed).

From the forward pass:

``forward-error``        the model's forward pass raised on the example batch, in the module
                         named; the checks below saw only what ran before it.
``batch-of-one``         a batch norm gets one value per channel (a batch of one sample of
                         an MLP, or a GhostBatchNorm's last virtual batch of one): batch
                         statistics are undefined and torch raises "Expected more than 1
                         value per channel when training". The doctor carries on with that
                         layer on its running statistics.
``small-batch``          the example batch gives a batch norm fewer than 8 samples or
                         fewer than 32 values per channel (at 32 values the batch
                         variance is off by about 25% from one batch to the next;
                         Wu & He 2018 measure ResNet-50 at 23.6% error with 32 samples
                         per batch, 27.3% with 4 and 34.7% with 2). Frozen batch
                         norms, which use their running statistics, are left out.
``small-virtual-batch``  the same for a GhostBatchNorm's virtual batches (``virtual_batch_size``).
``channels-last``        a batch norm over dim 1 given a tensor whose channels are on the
                         last axis: ``BatchNorm1d(C)`` on an ``(N, L, C)`` sequence. Found
                         when dim 1 does not hold C channels and the last axis does (the
                         doctor then carries on with the axes swapped), or when the input
                         comes straight from a Linear or an Embedding, whose features are
                         on the last axis, although dim 1 happens to have C entries too.
``bias-before-bn``       a Conv/Linear with a bias feeds a batch norm, which subtracts
                         the channel mean and with it the bias: wasted parameters.
``bn-after-dropout``     a batch norm whose input depends on an active dropout (the module,
                         or ``F.dropout`` in a forward), directly or through any layers and
                         operations: its running variance is learnt with dropout on and
                         used with it off ("variance shift", Li et al. 2019).
``stats-mismatch``       the example batch's statistics are far from the running ones:
                         in the median channel, the batch mean more than one running
                         standard deviation away, or the batch variance more than 4x
                         off; what the model was trained on is not what it sees.
                         Running statistics still at their initial mean 0 and
                         variance 1 (an untrained layer) count only with
                         ``evaluating=True``.
``recurrent-bn``         a batch norm called more than once per forward (one module
                         applied at several time steps): its statistics mix all steps.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ._common import has_running_stats, is_batchnorm, preserved, run_batch, uses_batch_statistics
from .optim import norm_parameters
from .precise import forward_hint

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


def _grouped(code: str, names: list[str], message: str, fix: str) -> list[Finding]:
    """One finding for a mistake made in several layers, named by the first."""
    if not names:
        return []
    others = f" ({len(names)} batch norms: {_names(names)})" if len(names) > 1 else ""
    return [Finding(code, names[0], message + others, fix)]


def doctor(model: nn.Module, example_batch, *, evaluating: bool = False, forward=None, optimizer=None) -> list[Finding]:
    """Inspect ``model`` on ``example_batch`` and return what looks wrong with its batch norms.

    ``example_batch`` is fed as in :func:`normlab.precise_batchnorm` (a tensor, or the
    first element of a tuple; ``forward(model, batch)`` for anything else, a dict for
    instance); give one batch as large as your training batches and from your real
    data, since the ``small-batch`` and ``stats-mismatch`` checks read its statistics.
    Pass ``evaluating=True`` when the model is about to be used for evaluation, and the
    ``optimizer`` you train it with to have its weight decay checked. The model is left
    exactly as it was. An exception of the model's own forward pass is a finding
    (``forward-error``), not an exception.
    """
    if optimizer is not None and not hasattr(optimizer, "param_groups"):
        raise TypeError(f"doctor: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    layers = [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]
    findings = _mode_findings(model, layers, evaluating)
    for name, m in layers:
        findings += _configuration_findings(name, m)
    findings += _grouped(
        "no-running-stats",
        [name for name, m in layers if evaluating and not has_running_stats(m) and uses_batch_statistics(m)],
        "built with track_running_stats=False: it normalizes with the statistics of each batch in eval mode too, "
        "so a sample's output depends on the rest of its batch and a batch of one fails",
        "build the batch norms with track_running_stats=True (the default) and train them, or use GroupNorm/LayerNorm",
    )  # fmt: skip
    findings += _grouped(
        "stats-not-frozen",
        [name for name, m in layers if _frozen_by_requires_grad(m)],
        "weight and bias have requires_grad=False, but in training mode the layer still normalizes with batch "
        "statistics and updates its running statistics at every forward pass: requires_grad freezes only the affine parameters",
        "call .eval() on these layers after every model.train(), or freeze them whole: normlab.freeze_batchnorm(model) "
        "or layer.freeze('both')",
    )  # fmt: skip
    if optimizer is not None:
        findings += _weight_decay_findings(model, optimizer)
    findings += _Examination(model, layers, evaluating).run(example_batch, forward)
    return findings


def _mode_findings(model, layers, evaluating) -> list[Finding]:
    if evaluating and model.training:
        return [Finding(
            "bn-training-mode", "(model)",
            f"the model is in training mode, so its {len(layers)} batch norm(s) normalize with the statistics of "
            "each batch and update their running statistics",
            "call model.eval() before evaluating (and model.train() before training again)",
        )]  # fmt: skip
    training = [name for name, m in layers if m.training] if evaluating else []
    return [Finding(
        "bn-training-mode", training[0],
        f"{_names(training)} are in training mode inside a model in eval mode",
        "call model.eval() after anything that sets these layers back to training mode",
    )] if training else []  # fmt: skip


def _configuration_findings(name: str, m: nn.Module) -> list[Finding]:
    findings = []
    momentum = getattr(m, "momentum", None)
    if momentum is not None and momentum >= KERAS_MOMENTUM:
        findings.append(Finding(
            "keras-momentum", name,
            f"momentum={momentum}: PyTorch's momentum is the weight of the new batch, so the running statistics "
            f"follow the last {1 / momentum:.1f} batch(es); this looks like Keras's momentum (weight of the old average)",
            f"use momentum={1 - momentum:.3g} (1 - Keras's value)",
        ))  # fmt: skip
    gamma = getattr(m, "weight", None)
    if isinstance(gamma, torch.Tensor):
        dead = int((gamma.detach().abs() < DEAD_GAMMA).sum())
        if dead and not _untrained(m):  # before training, gamma is its initialization (zero on purpose, or random)
            findings.append(Finding(
                "dead-gamma", name,
                f"{dead} of {gamma.numel()} channels have |gamma| < {DEAD_GAMMA:g}: they output their bias "
                "whatever the input",
                "prune these channels, or drop weight decay on the batch-norm parameters (normlab.param_groups)",
            ))  # fmt: skip
    return findings


def _untrained(bn: nn.Module) -> bool:
    """Running statistics still at their initial mean 0 and variance 1: the layer has seen no data."""
    if not has_running_stats(bn):
        return False
    return bool((bn.running_mean == 0).all() and (bn.running_var == 1).all())


def _frozen_by_requires_grad(bn: nn.Module) -> bool:
    """Affine parameters frozen by hand on a layer whose statistics still move."""
    affine = [p for p in (getattr(bn, "weight", None), getattr(bn, "bias", None)) if isinstance(p, nn.Parameter)]
    moving = has_running_stats(bn) and getattr(bn, "momentum", None) != 0 and uses_batch_statistics(bn)
    # normlab's freeze("affine") also turns requires_grad off, and says that it is meant
    on_purpose = getattr(bn, "frozen_affine", False)
    return bool(affine) and not any(p.requires_grad for p in affine) and bn.training and moving and not on_purpose


def _weight_decay_findings(model: nn.Module, optimizer) -> list[Finding]:
    layer_of = norm_parameters(model)
    decayed: dict[str, float] = {}
    for group in optimizer.param_groups:
        decay = group.get("weight_decay", 0) or 0
        for p in group["params"] if decay else ():
            if id(p) in layer_of:
                decayed.setdefault(layer_of[id(p)], decay)
    if not decayed:
        return []
    names, decay = list(decayed), max(decayed.values())
    return [Finding(
        "norm-weight-decay", names[0],
        f"the optimizer applies weight_decay={decay:g} to the parameters of {len(names)} normalization layer(s) "
        f"({_names(names)}): it shrinks gamma, and with it the scale of the layer's output, which is not what decay "
        "on the weights is for (He et al. 2019 leave norm parameters and biases undecayed)",
        "build the optimizer on normlab.param_groups(model, weight_decay=...), which gives norms and biases no weight decay",
    )]  # fmt: skip


# --- the forward pass ---------------------------------------------------------------------------

_DROPOUTS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


class _Trace(TorchFunctionMode):
    """Sees every torch operation of the forward pass, to know two things about each tensor:
    which active dropouts it depends on, and which leaf module (if any) produced it last."""

    def __init__(self, running) -> None:
        super().__init__()
        self.running = running  # () -> qualified name of the module whose forward is running
        self.dropouts: dict[int, tuple] = {}  # id(tensor) -> (weakref, frozenset of dropout labels)
        self.dropped: dict[int, tuple] = {}  # id(tensor) -> (weakref, label): a dropout's output itself
        self.producers: dict[int, tuple] = {}  # id(tensor) -> (weakref, name, module), set by leaf modules' hooks

    @staticmethod
    def _get(table, t):
        entry = table.get(id(t))
        return entry[1:] if entry is not None and entry[0]() is t else None

    def depends_on(self, t) -> frozenset:
        found = self._get(self.dropouts, t)
        return found[0] if found else frozenset()

    def dropout_output(self, t) -> str | None:
        found = self._get(self.dropped, t)
        return found[0] if found else None

    def producer(self, t):
        return self._get(self.producers, t) or (None, None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        name = getattr(func, "__name__", "")
        written = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if inputs and (name == "__setitem__" or (name.endswith("_") and not name.startswith("__"))):
            written.append(inputs[0])  # in place
        if isinstance(kwargs.get("out"), torch.Tensor):
            written.append(kwargs["out"])
        for t in written:
            self.producers.pop(id(t), None)  # an operation after the module: no longer the module's output as it left it
        labels = frozenset().union(*map(self.depends_on, inputs)) if inputs else frozenset()
        if func in _DROPOUTS:
            bound = inspect.signature(func).bind(*args, **kwargs)
            bound.apply_defaults()
            p, training = bound.arguments["p"], bound.arguments["training"]
            if training and p > 0:
                label = self.running(func.__name__, p)
                labels |= {label}
                for t in written:
                    self.dropped[id(t)] = (weakref.ref(t), label)
        if labels:
            for t in written:
                self.dropouts[id(t)] = (weakref.ref(t), labels | self.depends_on(t))
        return out


class _Examination:
    """One train-mode forward pass with hooks on every module; its findings."""

    def __init__(self, model: nn.Module, layers, evaluating: bool) -> None:
        self.model, self.evaluating = model, evaluating
        self.bn_names = {m: name for name, m in layers}
        self.names = {m: name or "(model)" for name, m in model.named_modules()}
        self.stack: list[nn.Module] = []  # modules whose forward is running, innermost last
        self.trace = _Trace(self._running)
        self.calls: Counter = Counter()
        self.pending: dict[nn.Module, tuple[bool, bool]] = {}  # bn -> (axes swapped, switched to eval) for this call
        self.findings: list[Finding] = []
        self.one_value: list[tuple[str, tuple, bool]] = []  # (layer, input shape, in a virtual batch)
        self.small: list[tuple[str, int, int]] = []  # (layer, samples, values per channel)
        self.small_virtual: list[tuple[str, int, int]] = []
        self.downstream: dict[str, list[str]] = {}  # dropout label -> batch norms depending on it, in order
        self.direct: set[tuple[str, str]] = set()  # (dropout label, batch norm) fed by the dropout's output itself

    def _running(self, function: str, p: float) -> str:
        module = self.stack[-1] if self.stack else self.model
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return f"{self.names[module]} ({type(module).__name__}(p={p}))"
        return f"F.{function}(p={p}) in {self.names[module]}"

    def run(self, batch, forward) -> list[Finding]:
        handles = []
        for m in self.model.modules():
            handles.append(m.register_forward_pre_hook(lambda m, args: self.stack.append(m)))
            handles.append(m.register_forward_hook(self._after))
        for bn in self.bn_names:
            handles.append(bn.register_forward_pre_hook(self._before_bn))
        failure = None
        try:
            with preserved(self.model), torch.no_grad():
                self.model.train()
                try:
                    with self.trace:
                        run_batch(self.model, batch, forward)
                except Exception as e:  # the model's own forward: a finding, with where it happened
                    failure = (self.names[self.stack[-1]] if self.stack else "(model)", e)
        finally:
            for h in handles:
                h.remove()
        return self.findings + self._forward_findings(batch, forward, failure)

    def _after(self, module, args, output):
        self.stack.pop()
        swapped, switched = self.pending.pop(module, (False, False))
        if switched:
            module.training = True
        if swapped and isinstance(output, torch.Tensor):
            output = output.movedim(1, -1)  # back to the layout the model expects
        if isinstance(output, torch.Tensor) and not any(True for _ in module.children()):
            self.trace.producers[id(output)] = (weakref.ref(output), self.names[module], module)
        return output if swapped else None

    def _before_bn(self, bn, args):
        name = self.bn_names[bn]
        self.calls[name] += 1
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.numel() == 0:
            return None
        first = self.calls[name] == 1
        if first:
            self._dropout(name, x)
        swapped = self._channels_last(name, bn, x, first)
        if swapped:
            x = x.movedim(-1, 1)
        elif first:
            self._bias(name, x)
        one_value = self._batch_size(name, bn, x, first)
        if first and not one_value:  # the statistics of one value say nothing
            self.findings += _statistics_findings(name, bn, x, self.evaluating)
        switched = one_value and has_running_stats(bn)
        if switched:
            bn.training = False  # carry on past it, normalizing with the running statistics
        self.pending[bn] = (swapped, switched)
        return (x, *args[1:]) if swapped else None

    def _channels_last(self, name, bn, x, first) -> bool:
        """Whether ``x`` holds the layer's channels on its last axis instead of dim 1 (and so is swapped)."""
        channels = getattr(bn, "num_features", None)
        if channels is None or x.dim() < 3 or x.shape[-1] != channels:
            return False
        _, src = self.trace.producer(x)
        last_axis_features = isinstance(src, (nn.Linear, nn.Embedding))
        swapped = x.shape[1] != channels
        if first and (swapped or last_axis_features):
            source = f" (it comes from {self.names[src]}: {type(src).__name__}, whose features are on the last axis)" if last_axis_features else ""
            self.findings.append(Finding(
                "channels-last", name,
                f"normalizes dim 1 of an input of shape {tuple(x.shape)} whose {channels} channels are on the last "
                f"axis{source}: its statistics are taken per position of dim 1 instead of per channel",
                "move the channels to dim 1 around it: bn(x.transpose(1, 2)).transpose(1, 2) for an (N, L, C) input, "
                "or use LayerNorm if a per-token normalization is meant",
            ))  # fmt: skip
        return swapped

    def _batch_size(self, name, bn, x, first) -> bool:
        """Record too few samples or values per channel; True when a batch statistic would see one value."""
        if not uses_batch_statistics(bn):
            return False
        n, per_sample = x.shape[0], x[0].numel() // x.shape[1]
        virtual = getattr(bn, "virtual_batch_size", None)
        ghost = virtual is not None and virtual < n
        samples, smallest = (virtual, n % virtual or virtual) if ghost else (n, n)
        if smallest * per_sample == 1 and getattr(bn, "one_value_per_channel", "raise") == "raise":
            if first:
                self.one_value.append((name, tuple(x.shape), ghost))
            return True
        if first and (samples < MIN_SAMPLES or samples * per_sample < MIN_VALUES):
            (self.small_virtual if ghost else self.small).append((name, samples, samples * per_sample))
        return False

    def _dropout(self, name, x) -> None:
        for label in sorted(self.trace.depends_on(x)):
            reached = self.downstream.setdefault(label, [])
            if name not in reached:
                reached.append(name)
        label = self.trace.dropout_output(x)
        if label is not None:
            self.direct.add((label, name))

    def _bias(self, name, x) -> None:
        src_name, src = self.trace.producer(x)
        # A Linear's bias is per channel of the batch norm only when its output is (N, features).
        per_channel = not isinstance(src, nn.Linear) or x.dim() == 2
        if isinstance(src, (nn.modules.conv._ConvNd, nn.Linear)) and src.bias is not None and per_channel:
            self.findings.append(Finding(
                "bias-before-bn", src_name,
                f"has a bias and feeds {name}, which subtracts each channel's mean and with it the bias: "
                f"{src.bias.numel()} parameters that do nothing",
                f"build {src_name} with bias=False",
            ))  # fmt: skip

    def _forward_findings(self, batch, forward, failure) -> list[Finding]:
        findings = []
        stopped_at = None
        if failure is not None:
            where, e = failure
            if any(where == name for name, _, _ in self.one_value):
                stopped_at = where  # the batch of one itself: already the finding
            else:
                findings.append(_forward_error(where, e, batch, forward))
        if self.one_value:
            _, shape, ghost = self.one_value[0]
            findings += _grouped(
                "batch-of-one", [name for name, _, _ in self.one_value],
                f"{'its last virtual batch gives' if ghost else 'gets'} one value per channel (input of shape {shape}): "
                "the statistics of a batch of one are undefined, and torch raises \"Expected more than 1 value per "
                "channel when training\"" + (" (the forward pass stopped there)" if stopped_at else ""),
                "train with batches of 2 or more samples (DataLoader(..., drop_last=True) drops a last batch of one), "
                "run single samples in model.eval(), or use GroupNorm/LayerNorm",
            )  # fmt: skip
        findings += _small_batch("small-batch", self.small, "use larger batches, GhostBatchNorm/BatchRenorm, or GroupNorm/LayerNorm, which do not depend on the batch")
        findings += _small_batch("small-virtual-batch", self.small_virtual, "use a larger virtual_batch_size (at least 8 samples and 32 values per channel)")
        for label, reached in self.downstream.items():
            direct = (label, reached[0]) in self.direct
            more = f"; {len(reached)} batch norms depend on it: {_names(reached)}" if len(reached) > 1 else ""
            findings.append(Finding(
                "bn-after-dropout", reached[0],
                f"{'directly after' if direct else 'downstream of'} {label}: the running variance is learnt with "
                f"dropout on and used with it off, a variance shift that hurts inference (Li et al. 2019){more}",
                f"move {label.split(' ')[0]} after the last batch norm (e.g. just before the classifier), or remove it",
            ))  # fmt: skip
        for name, n in self.calls.items():
            if n > 1:
                findings.append(Finding(
                    "recurrent-bn", name,
                    f"called {n} times in one forward pass: its batch statistics and running statistics mix all the calls "
                    "(time steps), whose distributions differ",
                    "use one batch norm per time step (Cooijmans et al. 2017) or LayerNorm; ignore if the module is "
                    "shared on purpose (a siamese network)",
                ))  # fmt: skip
        return findings


def _forward_error(where: str, e: Exception, batch, forward) -> Finding:
    text = " ".join(str(e).split("Exception raised from")[0].split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return Finding(
        "forward-error", where, f"the forward pass raised {type(e).__name__}: {text}",
        forward_hint(batch, forward) or "give an example batch the model accepts as it is (one training batch), "
        "or forward=lambda model, batch: ... to say how a batch is fed",
    )  # fmt: skip


def _small_batch(code: str, small: list[tuple[str, int, int]], fix: str) -> list[Finding]:
    """One finding for every layer whose batch statistics are taken over too few values, named by the worst."""
    if not small:
        return []
    name, samples, values = min(small, key=lambda s: (s[2], s[1]))
    others = f" ({len(small)} batch norms in all: {_names([s[0] for s in small])})" if len(small) > 1 else ""
    batch = "virtual batch" if code == "small-virtual-batch" else "batch"
    if values < MIN_VALUES:
        why = f"the variance alone is off by about {math.sqrt(2 / max(values - 1, 1)):.0%} from one batch to the next"
    else:  # many values, but from few samples: the statistics follow those samples' content
        why = "the statistics follow the content of these few samples (Wu & He 2018: ResNet-50 at 27.3% error with 4 samples per batch, 23.6% with 32)"
    return [Finding(
        code, name, f"{batch} statistics over {samples} sample(s), {values} value(s) per channel{others}: {why}", fix,
    )]  # fmt: skip


def _statistics_findings(name: str, bn: nn.Module, x: torch.Tensor, evaluating: bool) -> list[Finding]:
    if not has_running_stats(bn):
        return []
    values64 = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
    mean, var = values64.mean(1), values64.var(1, unbiased=False)
    running_mean, running_var = bn.running_mean.double(), bn.running_var.double()
    shift = ((mean - running_mean).abs() / (running_var + bn.eps).sqrt()).median().item()
    ratio = ((var + bn.eps) / (running_var + bn.eps)).median().item()
    fresh = _untrained(bn)
    if fresh and not evaluating:
        return []  # a layer that has not been trained yet: nothing to compare
    if shift > MEAN_SHIFT or not 1 / VARIANCE_RATIO <= ratio <= VARIANCE_RATIO:
        return [Finding(
            "stats-mismatch", name,
            f"in the median channel the example batch's mean is {shift:.2g} running standard deviations from the "
            f"running mean and its variance {ratio:.2g}x the running variance"
            + (" (the running statistics were never updated: mean 0, variance 1)" if fresh else ""),
            "recompute the running statistics on your data (normlab.precise_batchnorm), or check that inference "
            "inputs are preprocessed as in training",
        )]  # fmt: skip
    return []
