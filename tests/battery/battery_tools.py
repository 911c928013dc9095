"""The tools' battery: every tool on odd models, each case with its outcome declared from what the model is.

Outcomes (declared in :func:`expected` from the model's description, before any tool runs):

- *same outputs*: the model the tool returns computes what the original computed (eval mode; for
  ``convert`` and ``convert_sync_batchnorm`` training mode too, running statistics included), and a
  module used at several places stays one module;
- *exact statistics*: ``precise_batchnorm`` set each batch norm that tracks statistics (and is not
  frozen) to the mean and unbiased variance of what it sees over the batches, and left frozen ones alone;
- *finding*: the doctor returns the findings named (and leaves the model exactly as it was);
- *report*: ``summary`` counts every parameter once; *partition*: ``param_groups`` puts every
  parameter in one group once, every normalization's parameters and every bias without decay;
- *error*: a one-line ValueError/TypeError starting with the tool's name, naming the layer concerned;
- *model's error*: the model's own exception (its forward raises), passed on as it is.

Anything else is a defect: *silent wrong answer*, *traceback for a user's mistake* (an exception that is
not a clear error), *unclear error*, *error where none is due*.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

import normlab
from normlab.tools.optim import is_norm

TOOLS = ("fold", "precise", "convert", "freeze", "sync", "summary", "doctor", "param_groups")


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))

    def forward(self, x):
        self.body(x)
        raise KeyError("the model's own bug")


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleDict({
            "a": nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())),
            "b": nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)),
        })

    def forward(self, x):
        return self.branches["a"](x) + self.branches["b"](x)


class Tokens(nn.Module):
    """A Linear on (N, L, F) tokens followed by BatchNorm1d(L), with L == F: dim 1 is L, not the features."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(self.linear(x))


def _shared():
    bn = nn.BatchNorm1d(4)
    return nn.Sequential(nn.Linear(4, 4), bn, nn.ReLU(), bn)


def _frozen():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), normlab.BatchNorm2d(4), nn.ReLU())
    model[1].freeze("statistics")
    return model


@dataclass(frozen=True)
class Model:
    name: str
    build: object
    input: tuple[int, ...]
    norms: bool = True  # holds a normalization layer
    tracked: bool = True  # every batch norm keeps running statistics
    raises: bool = False  # its forward raises
    channels_last: bool = False
    eval: bool = False  # handed to the tools in eval mode
    findings: tuple[str, ...] = ()  # what the doctor must find
    slow: bool = False


MODELS = [
    Model("no norms", lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), (6, 4), norms=False),
    Model("norms only", lambda: nn.Sequential(nn.BatchNorm1d(4)), (6, 4)),
    Model("one batch norm used twice", _shared, (6, 4)),
    Model("nested Sequential and ModuleDict", Nested, (2, 3, 5, 5)),
    Model("batch norm before Linear", lambda: nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3)), (6, 4)),
    Model("affine=False", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU()),
          (2, 3, 5, 5)),
    Model("track_running_stats=False", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(
        4, track_running_stats=False)), (2, 3, 5, 5), tracked=False),
    Model("statistics frozen", _frozen, (2, 3, 5, 5)),
    Model("channels_last", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).to(
        memory_format=torch.channels_last), (2, 3, 5, 5), channels_last=True),
    Model("a model in eval", lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), (6, 4), eval=True),
    Model("a forward that raises", Raises, (6, 4), raises=True, findings=("forward-error",)),
    Model("Linear on (N, L, F) tokens, BatchNorm1d(L), L == F", Tokens, (6, 5, 5)),
    Model("normlab's BatchNormAct after a conv", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), normlab.BatchNormAct(
        4, "leaky_relu")), (2, 3, 5, 5)),
    Model("GroupNorm and LayerNorm, no batch norm", lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4),
          nn.Flatten(), nn.LayerNorm(36)), (2, 3, 5, 5)),
    Model("torchvision resnet18", "torchvision:resnet18", (2, 3, 32, 32), slow=True),
    Model("timm efficientnet_b0 (BatchNormAct2d)", "timm:efficientnet_b0", (2, 3, 32, 32), slow=True),
]
BY_NAME = {m.name: m for m in MODELS}


def build(model: Model) -> nn.Module:
    if isinstance(model.build, str):  # torchvision's or timm's, random init, statistics from two batches
        from conftest import import_torchvision

        library, name = model.build.split(":")
        tv = import_torchvision()  # (timm imports it)
        if library == "timm":
            import timm

            net = timm.create_model(name, pretrained=False, num_classes=10)
        else:
            net = getattr(tv.models, name)(num_classes=10)
    else:
        net = model.build()
    torch.manual_seed(0)
    with torch.no_grad():  # running statistics that are not the initial ones
        net.train()
        for _ in range(2):
            try:
                net(example(model))
            except KeyError:
                pass
    return net.eval() if model.eval else net.train()


def example(model: Model) -> torch.Tensor:
    x = torch.randn(model.input, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    return x.to(memory_format=torch.channels_last) if model.channels_last else x


@dataclass(frozen=True)
class ToolCase:
    tool: str
    model: str

    @property
    def id(self) -> str:
        return f"{self.tool} | {self.model}"

    @property
    def group(self) -> str:
        return "tools"


def tool_cases() -> list[ToolCase]:
    return [ToolCase(tool, m.name) for tool in TOOLS for m in MODELS]


def expected(case: ToolCase) -> str:
    """The outcome the case must have, from the model's description alone."""
    m = BY_NAME[case.model]
    has_bn = m.norms and m.name not in ("GroupNorm and LayerNorm, no batch norm",)
    if case.tool == "fold":  # (given the example input, which it runs the model on)
        return "error" if not m.tracked else "model's error" if m.raises else "same outputs"
    if case.tool == "precise":
        if not has_bn or not m.tracked or m.name == "statistics frozen":  # nothing it may recompute
            return "error"
        return "model's error" if m.raises else "exact statistics"
    if case.tool == "freeze":
        return "error" if not m.tracked else "same outputs"
    if case.tool in ("convert", "sync"):
        return "same outputs"
    if case.tool == "summary":
        return "model's error" if m.raises else "report"
    if case.tool == "doctor":
        return "finding"
    if case.tool == "param_groups":
        return "partition"
    raise AssertionError(case.tool)


TOOL_NAMES = {"fold": "fold_batchnorm", "precise": "precise_batchnorm", "freeze": "freeze_batchnorm",
              "sync": "convert_sync_batchnorm", "convert": "convert", "summary": "summary", "doctor": "doctor",
              "param_groups": "param_groups"}


def _outputs(model: nn.Module, x: torch.Tensor, training: bool):
    model = copy.deepcopy(model).train(training)
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001 -- compared by type
        return type(e), None
    state = {k: v for k, v in model.state_dict().items() if "running" in k}
    return y, state


def _same(a, b, what: str) -> str | None:
    (ya, sa), (yb, sb) = a, b
    if isinstance(ya, type) or isinstance(yb, type):
        return None if ya == yb else f"{what}: {ya} against {yb}"
    if ya.shape != yb.shape or not torch.allclose(ya, yb, rtol=1e-4, atol=1e-5):
        return f"{what}: outputs differ by {(ya - yb).abs().max().item():.3g}"
    if sa is not None and sb is not None and len(sa) == len(sb):
        for (ka, va), (kb, vb) in zip(sa.items(), sb.items()):
            if not torch.allclose(va, vb, rtol=1e-4, atol=1e-6):
                return f"{what}: {ka} differs from {kb}"
    return None


def _distinct_norms(model: nn.Module) -> int:
    return len({id(m) for m in model.modules() if is_norm(m) or isinstance(m, normlab.nn.FrozenBatchNorm)})


def run_tool(case: ToolCase) -> tuple[str, str]:
    """Run the tool on the case's model; the outcome and a line saying what happened."""
    m = BY_NAME[case.model]
    model = build(m)
    x = example(m)
    name = TOOL_NAMES[case.tool]
    before = copy.deepcopy(model.state_dict())
    reference_eval = _outputs(model.eval() if case.tool == "fold" else model, x, False)
    reference_train = _outputs(model, x, True)
    norms = _distinct_norms(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if case.tool == "fold":
                new = normlab.fold_batchnorm(model.eval(), x).model
            elif case.tool == "convert":
                new = normlab.convert(copy.deepcopy(model))
            elif case.tool == "freeze":
                new = normlab.freeze_batchnorm(copy.deepcopy(model))
            elif case.tool == "sync":
                new = normlab.convert_sync_batchnorm(copy.deepcopy(model))
            elif case.tool == "precise":
                target = copy.deepcopy(model)
                seen = _seen_statistics(target, [x, x * 0.5 + 1])
                new = normlab.precise_batchnorm(target, [x, x * 0.5 + 1], progress=False)
            elif case.tool == "summary":
                report = normlab.summary(model, input_data=x)
            elif case.tool == "doctor":
                findings = normlab.doctor(model, x)
            elif case.tool == "param_groups":
                groups = normlab.param_groups(model, weight_decay=1e-4)
    except Exception as e:  # noqa: BLE001 -- judged below
        said = f"{type(e).__name__}: {e}"
        if m.raises and isinstance(e, KeyError):
            return "model's error", said
        if isinstance(e, (ValueError, TypeError)) and str(e).startswith(name) and "\n" not in str(e):
            return "error", said
        return "traceback for a user's mistake", said
    if case.tool in ("fold", "convert", "freeze", "sync"):
        problem = _same(reference_eval, _outputs(new, x, False), "eval")
        if case.tool in ("convert", "sync") and problem is None:
            problem = _same(reference_train, _outputs(new, x, True), "train")
        if problem is None and case.tool != "fold" and _distinct_norms(new) != norms:
            problem = f"{norms} normalization module(s) became {_distinct_norms(new)}"
        return ("silent wrong answer", problem) if problem else ("same outputs", "")
    if case.tool == "precise":
        for layer_name, layer in new.named_modules():
            if layer_name not in seen:
                continue
            mean, var = seen[layer_name]
            if not torch.allclose(layer.running_mean, mean, rtol=1e-4, atol=1e-5) or (
                    var is not None and not torch.allclose(layer.running_var, var, rtol=1e-4, atol=1e-5)):
                return "silent wrong answer", f"{layer_name}: running statistics are not those of its input"
        return "exact statistics", ""
    if case.tool == "summary":
        # Keras's counts: trainable parameters, and the rest (frozen parameters, floating-point buffers)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for b in model.buffers() if b.is_floating_point())
        if (report.trainable, report.total) == (trainable, total):
            return "report", ""
        return "silent wrong answer", f"counted {report.trainable} / {report.total}, expected {trainable} / {total}"
    if case.tool == "doctor":
        codes = {f.code for f in findings}
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        if changed:
            return "silent wrong answer", f"the doctor changed {changed}"
        missing = set(m.findings) - codes
        return ("finding", "") if not missing else ("silent wrong answer", f"no {sorted(missing)} among {sorted(codes)}")
    if case.tool == "param_groups":
        decay, no_decay = (g["params"] for g in groups)
        ids = [id(p) for p in decay + no_decay]
        unique = {id(p) for p in model.parameters()}
        norm_params = {id(p) for mod in model.modules() if is_norm(mod) for p in mod.parameters(recurse=False)}
        ok = len(ids) == len(set(ids)) == len(unique) and norm_params <= {id(p) for p in no_decay}
        return ("partition", "") if ok else ("silent wrong answer", "not every parameter in one group once")
    raise AssertionError(case.tool)


def _seen_statistics(model: nn.Module, batches) -> dict:
    """What precise_batchnorm must set: per batch norm that tracks and is not frozen, the mean and unbiased
    variance of everything it sees over ``batches`` in training mode (torch's own ops, on a copy)."""
    probe = copy.deepcopy(model).train()
    seen: dict[str, list] = {}
    hooks = []
    for name, layer in probe.named_modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None and not getattr(
                layer, "frozen_statistics", False):
            hooks.append(layer.register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].detach().clone())))
    with torch.no_grad():
        for x in batches:
            try:
                probe(x)
            except KeyError:
                pass
    for h in hooks:
        h.remove()
    out = {}
    for name, xs in seen.items():
        flat = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in xs], 1).double()
        layer = probe.get_submodule(name)
        out[name] = (flat.mean(1).float(), None if layer.running_var is None else flat.var(1).float())
    return out
