"""Fold batch norm into the layer before it, for inference.

At inference a batch norm is an affine map per channel, ``y = scale * z + shift`` with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``.
When ``z`` is the output of a convolution or linear layer ``z = W x + b`` used by
nothing else, the two collapse into one layer with weight ``scale * W`` (per output
channel) and bias ``scale * b + shift``, and the batch norm disappears.

:func:`fold_batchnorm` finds those pairs in the model's data-flow graph traced by
``torch.fx``. Where a module cannot be traced (data-dependent control flow), it
analyses each of its sub-modules instead, and inside an ``nn.Sequential``, whose
forward passes each output to the next module and nowhere else, it pairs neighbours by
their order. Every batch norm it cannot fold becomes a :class:`ChannelAffine`, the same
map as one multiply-add. It works on a deep copy and reports what it did.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from ._common import after_affine, inference_affine, is_batchnorm, label, uses_batch_statistics
from .summary import count_parameters

__all__ = ["ChannelAffine", "FoldResult", "LinearOutputCheck", "fold_batchnorm"]

# Exactly these classes: a subclass may change what forward does with its weight
# (weight standardization, a parametrization), which folding would break.
FOLDABLE = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear,
)  # fmt: skip


class ChannelAffine(nn.Module):
    """``y = weight * x + bias`` per channel (dim 1): a batch norm at inference, as one multiply-add."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, *[1] * (x.dim() - 2))
        return torch.addcmul(self.bias.view(shape), x, self.weight.view(shape))

    def extra_repr(self) -> str:
        return str(self.weight.numel())


class LinearOutputCheck(nn.Module):
    """Where a batch norm was folded into the Linear before it without an example input: passes the
    Linear's output on if it is ``(N, features)``, the layout the fold assumed, and raises otherwise
    (a Linear's features are its output's last axis, a batch norm's channels dim 1)."""

    def __init__(self, linear: str, batchnorm: str) -> None:
        super().__init__()
        self.linear, self.batchnorm = linear, batchnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise RuntimeError(
                f"fold_batchnorm folded {self.batchnorm} into {self.linear} for 2-D (N, features) outputs; this call "
                f"gives a {x.dim()}-D output of shape {tuple(x.shape)}, whose features are not the channels the batch "
                "norm normalized: fold the model again with an example input (fold_batchnorm(model, x))"
            )
        return x

    def extra_repr(self) -> str:
        return f"{self.linear} -> {self.batchnorm}"


@dataclass
class FoldResult:
    """The folded model and what was done to each batch norm (qualified names in the model)."""

    model: nn.Module
    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv or linear, batch norm folded into it)
    affine: list[tuple[str, str]] = field(default_factory=list)  # (batch norm made a ChannelAffine, why)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (batch norm left as it was, why)
    untraced: list[tuple[str, str]] = field(default_factory=list)  # (module torch.fx could not trace, error)
    parameters: tuple[int, int] = (0, 0)  # total before and after, as normlab.summary counts them

    def __str__(self) -> str:
        lines = [f"Folded {len(self.folded)} batch norm(s) into the layer before them"]
        lines += [f"  {layer} <- {bn}" for layer, bn in self.folded]
        sections = [
            (self.affine, "Replaced {} batch norm(s) by a per-channel affine (ChannelAffine)"),
            (self.kept, "Left {} batch norm(s) as they were"),
            (self.untraced, "torch.fx could not trace {} module(s); their sub-modules were analysed instead"),
        ]
        for items, title in sections:
            if items:
                lines.append(title.format(len(items)))
                lines += [f"  {name}: {why}" for name, why in items]
        before, after = self.parameters
        lines.append(f"Parameters (trainable and non-trainable, as normlab.summary counts them): {before:,} -> {after:,}")
        return "\n".join(lines)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with batch norms and every normlab layer kept as single calls."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return is_batchnorm(m) or type(m).__module__.startswith("normlab.") or super().is_leaf_module(m, qualified_name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(node: fx.Node, module: nn.Module, prefix: str) -> str:
    """What produced or uses a value in the graph, for the report."""
    if node.op == "call_module":
        return f"{_join(prefix, node.target)} ({type(module.get_submodule(node.target)).__name__})"
    if node.op == "placeholder":
        return "the model's input"
    return getattr(node.target, "__name__", str(node.target))


def _find_pairs(module: nn.Module, prefix: str, pairs: dict, why: dict, untraced: list) -> None:
    """Fill ``pairs`` (batch norm -> layer to fold it into) and ``why`` (batch norm -> why not)."""
    try:
        graph = _Tracer().trace(module)
    except Exception as e:  # fx raises many kinds: TraceError, TypeError, RuntimeError, ...
        untraced.append((prefix or "(model)", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        if type(module) is nn.Sequential:
            children = list(module.named_children())
            for (a_name, a), (b_name, b) in zip(children, children[1:]):
                if is_batchnorm(b) and type(a) in FOLDABLE:
                    pairs[_join(prefix, b_name)] = _join(prefix, a_name)
        for name, child in module.named_children():
            if any(True for _ in child.children()) and not _Tracer().is_leaf_module(child, name):
                _find_pairs(child, _join(prefix, name), pairs, why, untraced)
        return

    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not is_batchnorm(module.get_submodule(node.target)):
            continue
        name = _join(prefix, node.target)
        src = node.args[0] if node.args else None
        if calls[node.target] > 1:
            why[name] = f"called {calls[node.target]} times in the forward"
        elif len(node.args) != 1 or node.kwargs or not isinstance(src, fx.Node):
            why[name] = "called with more than its input"
        elif src.op != "call_module" or type(module.get_submodule(src.target)) not in FOLDABLE:
            why[name] = f"follows {_describe(src, module, prefix)}, not a Conv, ConvTranspose or Linear"
        elif len(src.users) > 1:
            others = ", ".join(_describe(u, module, prefix) for u in src.users if u is not node)
            why[name] = f"the output of {_join(prefix, src.target)} is also used by {others}"
        elif calls[src.target] > 1:
            why[name] = f"{_join(prefix, src.target)} is called {calls[src.target]} times in the forward"
        else:
            pairs[name] = _join(prefix, src.target)


@torch.no_grad()
def _fold_into(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``layer`` compute ``scale * layer(x) + shift`` per output channel, in place."""
    w = layer.weight
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        # weight (in, out / groups, *k): output channel g * (out / groups) + j is [group g's rows, j]
        g = layer.groups
        grouped = w.double().reshape(g, w.shape[0] // g, *w.shape[1:])
        folded = (grouped * scale.reshape(g, 1, -1, *[1] * (w.dim() - 2))).reshape(w.shape)
    else:  # Conv (out, in / groups, *k) and Linear (out, in): output channels along dim 0
        folded = w.double() * scale.reshape(-1, *[1] * (w.dim() - 1))
    w.copy_(folded)
    bias = shift if layer.bias is None else layer.bias.double() * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.to(w.dtype), requires_grad=w.requires_grad)
    else:
        layer.bias.copy_(bias)


def _acts_as_affine(bn: nn.Module, scale: torch.Tensor, shift: torch.Tensor, after: nn.Module) -> bool:
    """Check on a small random input that the layer really is ``after(scale * x + shift)`` in eval.

    A subclass may add to a batch norm's forward without saying so (timm's BatchNormAct2d
    applies an activation); replacing it by its affine map would silently drop that.
    """
    ref = bn.running_mean
    gen = torch.Generator().manual_seed(0)
    for ndim in (4, 2, 3, 5):
        x = torch.randn(2, scale.numel(), *[3] * (ndim - 2), generator=gen, dtype=torch.float64)
        try:
            with torch.no_grad():
                y = bn(x.to(device=ref.device, dtype=ref.dtype)).double().cpu()
        except Exception:
            continue  # not a rank this layer accepts
        expected = after(x * scale.cpu().view(-1, *[1] * (ndim - 2)) + shift.cpu().view(-1, *[1] * (ndim - 2)))
        tol = 1e-2 if ref.dtype in (torch.float16, torch.bfloat16) else 1e-4
        return bool(((y - expected).abs() <= tol * (1 + expected.abs())).all())
    return False


def _channels_out(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _linear_output_ranks(model: nn.Module, example_inputs: tuple) -> dict[str, set[int]]:
    """The ranks of every Linear's outputs when ``model`` runs on ``example_inputs`` (in eval, no grad)."""
    ranks: dict[str, set[int]] = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: ranks.setdefault(name, set()).add(out.dim()))
        for name, m in model.named_modules() if type(m) is nn.Linear
    ]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return ranks


def _unfolded(bn: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> nn.Module:
    """What replaces a batch norm that cannot be folded: its map as a ChannelAffine, then what follows it."""
    dtype = bn.running_mean.dtype
    affine = ChannelAffine(scale.to(dtype), shift.to(dtype))
    after = after_affine(bn)
    return affine if isinstance(after, nn.Identity) else nn.Sequential(affine, after)


def fold_batchnorm(model: nn.Module, *example_inputs) -> FoldResult:
    """Return a copy of ``model`` for inference with its batch norms folded away, and a report.

    Every batch norm whose input is the output of a ``Conv1d/2d/3d``,
    ``ConvTranspose1d/2d/3d`` or ``Linear`` used by nothing else, each called once and
    holding parameters shared with no other layer, is folded into that layer's weight
    and bias (a bias is added if it had none) and removed; what follows its affine map
    stays (``BatchNormAct``'s activation). Every other batch norm becomes a
    :class:`ChannelAffine` computing the same map. Each layer says what its map is (its
    ``inference_affine()``: in-place ABN's scale is ``|weight| + eps``); a batch-norm
    subclass whose eval output is not that map and does not say so (timm's
    ``BatchNormAct2d``, whose forward adds an activation) is left as it was.

    A Linear puts its features in its output's last axis, a batch norm its channels in
    dim 1: they are the same axis only when the Linear's output is ``(N, features)``.
    With ``example_inputs`` (the arguments of one call of the model), the fold runs the
    model once and folds a Linear only where its output is 2-D (elsewhere its batch norm
    becomes a ChannelAffine, and the report says why). Without them it folds, and puts a
    :class:`LinearOutputCheck` in the batch norm's place, which raises if the Linear's
    output is ever not 2-D rather than let the folded model compute something else.

    The model must be in eval mode and every batch norm must have running statistics
    (``track_running_stats=True``): otherwise a batch norm normalizes with the
    statistics of each batch, which no fixed map does. The model passed in is not
    modified; ``result.model`` is a deep copy. Arithmetic is done in float64 and
    stored in each layer's dtype.
    """
    layers = [(name, m) for name, m in model.named_modules() if is_batchnorm(m)]
    training = [label(n, m) for n, m in layers if m.training and uses_batch_statistics(m)]
    if model.training or training:
        where = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3 else "")
        raise ValueError(
            "fold_batchnorm: the model is in training mode"
            + (f" ({where} normalize with batch statistics)" if training else "")
            + "; folding replaces each batch norm by its inference map: call model.eval() first"
        )
    maps, missing = {}, []
    for n, m in layers:
        try:
            maps[id(m)] = inference_affine(m)
        except (ValueError, TypeError, AttributeError):  # no running statistics
            missing.append(label(n, m))
    if missing:
        raise ValueError(
            f"fold_batchnorm: {', '.join(missing)} keep no running statistics (track_running_stats=False), so they "
            "normalize with the statistics of each batch even in eval and cannot be folded; "
            "compute running statistics first (normlab.precise_batchnorm on a model built with track_running_stats=True)"
        )

    before = sum(count_parameters(model)[:2])
    ranks = _linear_output_ranks(model, example_inputs) if example_inputs else None
    model = copy.deepcopy(model)
    result = FoldResult(model)
    pairs: dict[str, str] = {}
    why: dict[str, str] = {}
    _find_pairs(model, "", pairs, why, result.untraced)

    places: dict[int, list[str]] = {}  # id(module) -> every name it is registered under
    for place, m in model.named_modules(remove_duplicate=False):
        places.setdefault(id(m), []).append(place)
    params = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name, bn in list(model.named_modules()):
        if not is_batchnorm(bn):
            continue
        scale, shift = inference_affine(bn)
        if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
            raise ValueError(
                f"fold_batchnorm: {label(name, bn)} has non-finite running statistics or parameters; "
                "its inference map is not finite"
            )
        if not _acts_as_affine(bn, scale, shift, after_affine(bn)):
            result.kept.append((name or "(model)", "its eval output is not a per-channel affine map of its input (does its "
                                      "forward add something, such as an activation?)"))
            continue
        layer_name = pairs.get(name)
        reason = why.get(name)
        if layer_name is not None:
            layer = model.get_submodule(layer_name)
            if len(places[id(layer)]) > 1 or len(places[id(bn)]) > 1:
                reason = f"{layer_name} or {name} is registered at several places in the model"
            elif any(params[id(p)] > 1 for p in layer.parameters()):
                reason = f"{layer_name} shares its parameters with another layer"
            elif _channels_out(layer) != scale.numel():
                reason = f"{layer_name} has {_channels_out(layer)} output channels, {name} normalizes {scale.numel()}"
            elif isinstance(layer, nn.Linear) and ranks is not None and ranks.get(layer_name) != {2}:
                got = sorted(ranks.get(layer_name, ()))
                reason = (f"{layer_name} gives {'/'.join(map(str, got)) or 'no'}-D outputs on the example input, so its "
                          f"features (the last axis) are not the channels {name} normalizes (dim 1)")
            else:
                _fold_into(layer, scale, shift)
                after = after_affine(bn)
                if isinstance(layer, nn.Linear) and ranks is None:  # the fold's assumption, checked at every call
                    check = LinearOutputCheck(layer_name, name)
                    after = check if isinstance(after, nn.Identity) else nn.Sequential(check, after)
                _replace(result, places[id(bn)], after)
                result.folded.append((layer_name, name))
                continue
        if reason is None:
            inside = [n for n, _ in result.untraced if n == "(model)" or name.startswith(n + ".")]
            reason = (
                f"its data flow is unknown: {max(inside, key=len)} cannot be traced by torch.fx"
                if inside
                else "not called as a module of its own in the traced forward"
            )
        _replace(result, places[id(bn)], _unfolded(bn, scale, shift))
        result.affine.append((name or "(model)", reason))
    result.parameters = (before, sum(count_parameters(result.model)[:2]))
    return result


def _replace(result: FoldResult, names: list[str], new: nn.Module) -> None:
    """Put ``new`` at each of ``names`` in the model (the model itself for the name '')."""
    for name in names:
        if not name:
            result.model = new
            continue
        parent, _, attr = name.rpartition(".")
        setattr(result.model.get_submodule(parent), attr, new)
