"""The layers' battery: every normlab layer kind x every kind of input x train / eval / momentum=None,
under the default dispatch and normlab's own backend.

Each case's expected outcome comes from torch before normlab runs: torch's own layer (or, for a
variant torch does not have, torch's layers composed as the variant's definition says) on the same
input, in the input's dtype and in float64.

- torch raises: normlab raises an exception of torch's type whose message names the layer
  (*same error as torch*);
- the input is finite and torch's answer agrees with its own float64 answer: normlab's output,
  running statistics, batch count and gradients agree with torch's (*same as torch*);
- the input is finite and torch's answer does not (its float32 variance overflows near float32's
  largest values, and torch returns zeros or NaN): normlab gives the float64 answer, its running
  statistics keeping their values where the float64 ones do not fit the dtype (*exact where torch
  is not*), or refuses the batch with an error naming the layer (*refused where torch is wrong*);
- the input holds NaN or Inf: the output is torch's (NaN where torch's is), and a training step
  leaves the running statistics of the channels that came out non-finite as they were, where
  torch's become NaN (*guarded*; torch's behaviour is ``non_finite="propagate"``);
- :data:`DOCUMENTED`: where normlab decides otherwise than torch on purpose, each with its reason.

Anything else is a defect, and gets its name as the actual outcome: *silent wrong answer*,
*NaN from finite input*, *unclear error* (not torch's type, or not naming the layer), *error where
torch answers*, *answer where torch raises*.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import normlab

C = 3  # channels of every batch-norm-like layer; GroupNorm has 4 in 2 groups, LayerNorm/RMSNorm normalize 5
N = 4

# relative to the largest value of the expected tensor: normlab against torch (tight), and torch against its
# own float64 answer (gross: beyond it torch's answer is wrong, not merely rounded differently)
TIGHT = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
GROSS = {torch.float64: 1e-6, torch.float32: 1e-2, torch.float16: 5e-2, torch.bfloat16: 1e-1}


# --- torch's side: the oracles for the variants torch has no class for ------------------------------


class GhostOracle(nn.SyncBatchNorm):
    """Ghost batch norm by its definition: torch's batch norm on each virtual batch in turn. The running
    statistics of a channel that one virtual batch makes non-finite keep their values for that step
    (normlab's guard, applied per step as the update is), and ``guarded`` says it happened."""

    def __init__(self, num_features, virtual_batch_size, **kwargs):
        super().__init__(num_features, **kwargs)
        self.virtual_batch_size = virtual_batch_size
        self.guarded = False

    def forward(self, x):
        if not self.training or x.dim() < 2 or x.shape[0] == 0:
            return super().forward(x)
        out = []
        for part in x.split(self.virtual_batch_size):
            before = self.running_mean.clone(), self.running_var.clone()
            out.append(super().forward(part))
            ok = torch.isfinite(self.running_mean) & torch.isfinite(self.running_var)
            self.guarded |= not bool(ok.all())
            # .data: torch's kernel saved them for its backward, and the guard's restoring is no modification
            self.running_mean.data.copy_(torch.where(ok, self.running_mean, before[0]))
            self.running_var.data.copy_(torch.where(ok, self.running_var, before[1]))
        return torch.cat(out)


class ActOracle(nn.SyncBatchNorm):
    """BatchNormAct by its definition: torch's batch norm (any rank from 2, as SyncBatchNorm), then ReLU."""

    def forward(self, x):
        return F.relu(super().forward(x))


class FrozenOracle(nn.SyncBatchNorm):
    """FrozenBatchNorm: torch's batch norm at inference, in training mode too (no batch counter)."""

    def __init__(self, num_features, **kwargs):
        super().__init__(num_features, **kwargs)
        self.register_buffer("num_batches_tracked", None)
        weight, bias = self.weight.data, self.bias.data  # buffers, not parameters: nothing is trained
        del self.weight, self.bias
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps) \
            if x.dim() >= 2 else super().forward(x)


class MeanOnlyOracle(nn.SyncBatchNorm):
    """Mean-only batch norm by its definition (Salimans & Kingma): x - mean + bias, the mean's running
    average kept as batch norm keeps it; no variance, no weight."""

    def __init__(self, num_features, **kwargs):
        super().__init__(num_features, **kwargs)
        self.register_parameter("weight", None)
        self.register_buffer("running_var", None)

    def forward(self, x):
        self._check_input_dim(x)
        if not x.is_floating_point():  # torch's batch norm's errors for what it refuses
            raise NotImplementedError(f"mean-only batch norm is not implemented for {x.dtype}")
        if self.bias.dtype != x.dtype and not (self.bias.dtype == torch.float32 and x.element_size() == 2):
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels")
        dims = (0, *range(2, x.dim()))
        shape = (1, -1, *[1] * (x.dim() - 2))
        if self.training and x.shape[0] == 0:  # torch's batch norm: counted, nothing else changes
            self.num_batches_tracked.add_(1)
            return x + self.bias.to(x.dtype).view(shape)
        if self.training:
            if x.numel() // x.shape[1] < 2:
                raise ValueError("Expected more than 1 value per channel when training")
            mean = x.mean(dims, dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else None)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        else:
            mean = self.running_mean
        return (x - mean.to(x.dtype).view(shape) + self.bias.to(x.dtype).view(shape))


@dataclass(frozen=True)
class Kind:
    """One normlab layer kind, how torch computes the same, and the input it takes."""

    name: str
    normlab: object  # (**kwargs) -> normlab layer
    torch: object  # (**kwargs) -> torch's layer computing the same
    shape: tuple[int, ...]  # a normal input
    channel_dim: int = 1  # the axis "channels" means in the input kinds (LayerNorm, RMSNorm: the normalized one)
    wrong_rank: tuple[int, ...] = (C,)
    running: bool = True  # keeps running statistics
    momentum: bool = True  # has a momentum (so momentum=None is a mode)


def _kinds() -> list[Kind]:
    nl, tn = normlab.nn, nn
    track = {"affine": True, "track_running_stats": True}
    kinds = [
        Kind("BatchNorm1d", lambda **k: nl.BatchNorm1d(C, **k), lambda **k: tn.BatchNorm1d(C, **k), (N, C, 5)),
        Kind("BatchNorm2d", lambda **k: nl.BatchNorm2d(C, **k), lambda **k: tn.BatchNorm2d(C, **k), (N, C, 2, 3),
             wrong_rank=(N, C, 6)),
        Kind("BatchNorm2d(track_running_stats=False)", lambda **k: nl.BatchNorm2d(C, track_running_stats=False, **k),
             lambda **k: tn.BatchNorm2d(C, track_running_stats=False, **k), (N, C, 2, 3), wrong_rank=(N, C, 6)),
        Kind("BatchNorm3d", lambda **k: nl.BatchNorm3d(C, **k), lambda **k: tn.BatchNorm3d(C, **k), (N, C, 2, 2, 2),
             wrong_rank=(N, C, 6)),
        # in its warm-up (5000 steps by default) batch renormalization is batch norm
        Kind("BatchRenorm1d", lambda **k: nl.BatchRenorm1d(C, **k), lambda **k: tn.BatchNorm1d(C, **k), (N, C)),
        Kind("BatchRenorm2d", lambda **k: nl.BatchRenorm2d(C, **k), lambda **k: tn.BatchNorm2d(C, **k), (N, C, 2, 3),
             wrong_rank=(N, C, 6)),
        Kind("BatchRenorm3d", lambda **k: nl.BatchRenorm3d(C, **k), lambda **k: tn.BatchNorm3d(C, **k),
             (N, C, 2, 2, 2), wrong_rank=(N, C, 6)),
        Kind("GhostBatchNorm", lambda **k: nl.GhostBatchNorm(C, virtual_batch_size=2, **k),
             lambda **k: GhostOracle(C, 2, **k), (N, C, 2, 3)),
        Kind("BatchNormAct", lambda **k: nl.BatchNormAct(C, "relu", **k), lambda **k: ActOracle(C, **k), (N, C, 5)),
        Kind("FrozenBatchNorm", lambda **k: nl.FrozenBatchNorm(C, **k), lambda **k: FrozenOracle(C, **k), (N, C, 2, 3),
             momentum=False),
        Kind("SyncBatchNorm", lambda **k: nl.SyncBatchNorm(C, **k), lambda **k: tn.SyncBatchNorm(C, **k), (N, C, 2, 3)),
        Kind("SyncBatchRenorm", lambda **k: nl.SyncBatchRenorm(C, **k), lambda **k: tn.SyncBatchNorm(C, **k), (N, C, 5)),
        Kind("MeanOnlyBatchNorm", lambda **k: nl.MeanOnlyBatchNorm(C, **k), lambda **k: MeanOnlyOracle(C, **k),
             (N, C, 5)),
        Kind("InstanceNorm1d", lambda **k: nl.InstanceNorm1d(C, **track, **k),
             lambda **k: tn.InstanceNorm1d(C, **track, **k), (N, C, 5), wrong_rank=(N, C, 2, 3)),
        Kind("InstanceNorm2d", lambda **k: nl.InstanceNorm2d(C, **track, **k),
             lambda **k: tn.InstanceNorm2d(C, **track, **k), (N, C, 2, 3), wrong_rank=(N, C)),
        Kind("InstanceNorm3d", lambda **k: nl.InstanceNorm3d(C, **track, **k),
             lambda **k: tn.InstanceNorm3d(C, **track, **k), (N, C, 2, 2, 2), wrong_rank=(N, C)),
        Kind("LayerNorm", lambda **k: nl.LayerNorm(5, **k), lambda **k: tn.LayerNorm(5, **k), (N, C, 5),
             channel_dim=-1, wrong_rank=(N, C, 6), running=False, momentum=False),
        Kind("RMSNorm", lambda **k: nl.RMSNorm(5, **k), lambda **k: tn.RMSNorm(5, **k), (N, C, 5),
             channel_dim=-1, wrong_rank=(N, C, 6), running=False, momentum=False),
        Kind("GroupNorm", lambda **k: nl.GroupNorm(2, 4, **k), lambda **k: tn.GroupNorm(2, 4, **k), (N, 4, 5),
             wrong_rank=(4,), running=False, momentum=False),
    ]
    return kinds


KINDS = {k.name: k for k in _kinds()}

INPUTS = (
    "normal", "constant channel", "one value per channel", "huge (near float32's largest)", "tiny (1e-30)",
    "NaN", "Inf", "empty batch", "wrong rank", "wrong channel count", "non-contiguous", "channels_last",
    "float16", "bfloat16", "float64", "float16 input, float32 layer", "float64 layer, float32 input",
    "integer input", "requires_grad",
)  # fmt: skip
MODES = ("train", "eval", "train, momentum=None")
BACKENDS = ("default", "normlab")

# Where normlab decides otherwise than torch on purpose: (kind prefix, input or mode) -> (what normlab does,
# why). "refuses": a clear error naming the layer; "answers": an output of the input's shape and dtype,
# finite where the input is (torch fails there with an error that is no user's mistake).
# "torch's": the output is torch's kernel's, wrong as it is (docs/layers.md says which backend gives what).
HUGE = "huge (near float32's largest)"
TORCHS_KERNEL = ("torch's", "this torch's RMS norm gives no 1 / sigma to look at (no torch._fused_rms_norm), so the "
                            "default dispatch returns its kernel's zeros where the float32 variance overflows; "
                            "use_backend('normlab') gives the right values (docs/layers.md)")
DOCUMENTED = {
    ("InstanceNorm", "train, momentum=None", None): ("refuses", "at construction: torch's InstanceNorm passes "
                                                     "momentum 0 for None, so its running statistics never move"),
    ("InstanceNorm", "empty batch", None): ("answers", "torch's instance norm raises IndexError on an empty batch"),
    **({} if hasattr(torch, "_fused_rms_norm") else {("RMSNorm", HUGE, "default"): TORCHS_KERNEL}),
}

# Defects found by the battery and not fixed yet (each is in the status file with its case): the case
# expects the defect, so that the count in docs/battery.md shows it and its test fails once it is fixed.
KNOWN_DEFECTS: dict = {}


def _lookup(table: dict, case: "LayerCase", what: str):
    for (prefix, key, backend), entry in table.items():
        if case.kind.startswith(prefix) and key == what and backend in (None, case.backend):
            return entry
    return None


def documented(case: "LayerCase") -> tuple[str, str] | None:
    return _lookup(DOCUMENTED, case, case.mode) or _lookup(DOCUMENTED, case, case.input)


def known_defect(case: "LayerCase") -> tuple[str, str] | None:
    return _lookup(KNOWN_DEFECTS, case, case.mode) or _lookup(KNOWN_DEFECTS, case, case.input)


@dataclass(frozen=True)
class LayerCase:
    kind: str
    input: str
    mode: str
    backend: str

    @property
    def id(self) -> str:
        return f"{self.kind} | {self.input} | {self.mode} | {self.backend}"

    @property
    def group(self) -> str:
        return "layers"


def layer_cases() -> list[LayerCase]:
    cases = []
    for kind in KINDS.values():
        modes = MODES if kind.momentum else MODES[:2]
        for input in INPUTS:
            if input == "channels_last" and len(kind.shape) not in (4, 5):
                continue
            for mode in modes:
                for backend in BACKENDS:
                    cases.append(LayerCase(kind.name, input, mode, backend))
    return cases


# --- inputs and state ----------------------------------------------------------------------------


def make_input(kind: Kind, input: str) -> tuple[torch.Tensor, torch.dtype]:
    """The input of the case, and the dtype the layer is put in."""
    gen = torch.Generator().manual_seed(zlib.crc32(input.encode()))
    shape = kind.shape
    base = lambda s=shape: torch.randn(s, generator=gen) * 1.5 + 0.3  # noqa: E731
    dim = kind.channel_dim
    if input in ("normal", "requires_grad"):
        return base(), torch.float32
    if input == "constant channel":
        x = base()
        x.select(dim, 1).fill_(7.0)
        return x, torch.float32
    if input == "one value per channel":
        return base((1, shape[1], *[1] * (len(shape) - 2)) if dim == 1 else (1, 1, shape[-1])), torch.float32
    if input.startswith("huge"):
        return base() * 1e37, torch.float32
    if input.startswith("tiny"):
        return base() * 1e-30, torch.float32
    if input in ("NaN", "Inf"):
        x = base()
        index = [0] * len(shape)
        index[dim] = 1
        x[tuple(index)] = float("nan") if input == "NaN" else float("inf")
        return x, torch.float32
    if input == "empty batch":
        return base((0, *shape[1:])), torch.float32
    if input == "wrong rank":
        return base(kind.wrong_rank), torch.float32
    if input == "wrong channel count":
        wrong = list(shape)
        wrong[dim] += 2
        return base(tuple(wrong)), torch.float32
    if input == "non-contiguous":
        x = base(shape[::-1]).permute(*reversed(range(len(shape))))
        assert not x.is_contiguous()
        return x, torch.float32
    if input == "channels_last":
        return base().to(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d), torch.float32
    if input in ("float16", "bfloat16", "float64"):
        dtype = getattr(torch, input)
        return base().to(dtype), dtype
    if input == "float16 input, float32 layer":
        return base().half(), torch.float32
    if input == "float64 layer, float32 input":
        return base(), torch.float64
    if input == "integer input":
        return (base() * 3).long(), torch.float32
    raise AssertionError(input)


def preset(layer: nn.Module) -> None:
    """The same non-trivial state in both layers: parameters, running statistics, three batches seen."""
    with torch.no_grad():
        for name, t in (*layer.named_parameters(), *layer.named_buffers()):
            if name == "num_batches_tracked":
                t.fill_(3)
            elif name == "running_var":
                t.copy_(torch.linspace(0.5, 2.0, t.numel()).view_as(t))
            elif name in ("running_mean", "bias"):
                t.copy_(torch.linspace(-0.5, 0.5, t.numel()).view_as(t))
            elif name == "weight":
                t.copy_(torch.linspace(0.5, 1.5, t.numel()).view_as(t))


@dataclass
class Result:
    out: torch.Tensor | None = None
    state: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    error: BaseException | None = None
    before: dict = field(default_factory=dict)
    guarded: bool = False  # the oracle kept running statistics that a step made non-finite


def run(build, mode: str, x: torch.Tensor, dtype: torch.dtype, grad: bool) -> Result:
    """Build a layer (``build`` may raise: the construction is part of the case), preset it, run it once."""
    result = Result()
    try:
        layer = build(**({"momentum": None} if mode.endswith("None") else {}))
        preset(layer)
        layer = layer.to(dtype)
        layer.train(mode != "eval")
        result.before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        if grad:
            x = x.detach().clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = layer(x)
        result.out = y.detach()
        if grad:
            cotangent = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
            (y * cotangent).sum().backward()
            result.grads = {"input": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
        result.state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
        result.guarded = getattr(layer, "guarded", False)
    except Exception as e:  # noqa: BLE001 -- the error is the result, judged by the case
        result.error = e
    return result


# --- judging ----------------------------------------------------------------------------------------


def _rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| over the finite entries of expected; inf where actual is
    not finite exactly where expected is not."""
    a, e = actual.double(), expected.double()
    if a.shape != e.shape:
        return float("inf")
    finite = torch.isfinite(e)
    if not torch.equal(torch.isfinite(a), finite):  # (NaN for -inf is no difference worth a name)
        return float("inf")
    if not finite.any():
        return 0.0
    err = (a[finite] - e[finite]).abs().max().item()
    if err != err:
        return float("inf")
    return err / max(e[finite].abs().max().item(), 1e-30)


def _state_target(oracle: Result, dtype: torch.dtype) -> dict:
    """What normlab's state must be: the oracle's, cast to the layer's dtype; in a channel where a running
    statistic is not finite, every running statistic as it was before the step (the guard keeps them)."""
    target = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in oracle.state.items()}
    running = [k for k in target if k in ("running_mean", "running_var")]
    if running:
        ok = torch.stack([torch.isfinite(target[k]) for k in running]).all(0)
        for k in running:
            target[k] = torch.where(ok, target[k], oracle.before[k].to(dtype))
    return target


def _close(ours: Result, target_out, target_state, target_grads, tol) -> bool:
    if _rel_error(ours.out, target_out) > tol:
        return False
    if set(ours.state) != set(target_state):
        return False
    for k, v in target_state.items():
        if v.is_floating_point() and _rel_error(ours.state[k], v) > tol:
            return False
        if not v.is_floating_point() and not torch.equal(ours.state[k], v):
            return False
    for k, v in target_grads.items():
        if (v is None) != (ours.grads.get(k) is None) or (v is not None and _rel_error(ours.grads[k], v) > 10 * tol):
            return False
    return True


def _clear(error: BaseException, expected_type: type, kind: str) -> bool:
    """An error of torch's type, on one line naming the layer."""
    return isinstance(error, expected_type) and kind.split("(")[0] in str(error) and "\n" not in str(error).strip()


def expect(case: LayerCase) -> tuple[str, dict]:
    """The expected outcome, from torch alone (or a known defect's); and what judging normlab needs."""
    expected, context = _expect(case)
    defect = known_defect(case)
    if defect:
        context["defect"] = defect[1]
        return defect[0], context
    return expected, context


def _expect(case: LayerCase) -> tuple[str, dict]:
    kind = KINDS[case.kind]
    x, dtype = make_input(kind, case.input)
    grad = case.input == "requires_grad"
    with torch.no_grad() if not grad else torch.enable_grad():
        theirs = run(kind.torch, case.mode, x, dtype, grad)
    context = {"x": x, "dtype": dtype, "grad": grad, "theirs": theirs}
    why = documented(case)
    if why and why[0] != "torch's":
        context["documented"] = why
        return "documented", context
    if why:  # torch's answer: what the case compares with
        context["documented"] = why
        context["target"] = (theirs.out, _state_target(theirs, dtype), theirs.grads)
        return "documented", context
    if theirs.error is not None:
        return "same error as torch", context
    finite = bool(torch.isfinite(x).all()) if x.is_floating_point() else True
    if not finite:
        target = _state_target(theirs, dtype)
        guarded = theirs.guarded or any(not torch.equal(target[k], theirs.state[k].to(dtype))
                                        for k in target if target[k].is_floating_point())
        context["target"] = (theirs.out, target, {})
        return ("guarded" if guarded else "same as torch"), context
    # float64, with the eps of the input's dtype where the layer's default depends on it (RMSNorm's eps=None)
    eps = {"eps": torch.finfo(x.dtype).eps} if kind.name == "RMSNorm" else {}
    exact = run(lambda **k: kind.torch(**eps, **k), case.mode, x.double(), torch.float64, grad)
    target = (exact.out.to(theirs.out.dtype), _state_target(exact, dtype),
              {k: (None if v is None else v.to(theirs.grads[k].dtype)) for k, v in exact.grads.items()})
    if exact.error is None and _close(theirs, *target, GROSS[theirs.out.dtype]):
        context["target"] = (theirs.out, _state_target(theirs, dtype), theirs.grads)
        return "same as torch", context
    context["target"] = target
    return "exact where torch is not", context


def judge(case: LayerCase, expected: str, context: dict) -> tuple[str, str]:
    """Run normlab's layer on the case; its outcome, and a line saying what happened."""
    kind = KINDS[case.kind]
    x, dtype, grad, theirs = context["x"], context["dtype"], context["grad"], context["theirs"]
    with normlab.use_backend(None if case.backend == "default" else case.backend):
        with torch.no_grad() if not grad else torch.enable_grad():
            ours = run(kind.normlab, case.mode, x, dtype, grad)
    if expected == "documented" and context["documented"][0] == "torch's":
        if ours.error is None and _close(ours, *context["target"], TIGHT[ours.out.dtype]):
            return "documented", context["documented"][1]
        return "silent wrong answer", "not torch's kernel's answer"
    if expected == "documented":
        does, why = context["documented"]
        if does == "refuses":
            ok = ours.error is not None and kind.name.split("(")[0] in str(ours.error)
        else:
            ok = ours.error is None and ours.out.shape == x.shape and ours.out.dtype == x.dtype and bool(
                torch.isfinite(ours.out).all() or not torch.isfinite(x).all())
        return ("documented" if ok else "unclear error" if ours.error is not None else "silent wrong answer"), \
            f"{does}: {why}"
    if ours.error is not None:
        said = f"{type(ours.error).__name__}: {ours.error}"
        if theirs.error is not None:
            return ("same error as torch" if _clear(ours.error, type(theirs.error), kind.name) else "unclear error"), said
        if expected == "exact where torch is not" and kind.name.split("(")[0] in str(ours.error):
            return "refused where torch is wrong", said
        return "error where torch answers", said
    if theirs.error is not None:
        return "answer where torch raises", f"torch: {type(theirs.error).__name__}: {theirs.error}"
    out, state, grads = context["target"]
    finite_in = not x.is_floating_point() or bool(torch.isfinite(x).all())
    if finite_in and torch.isfinite(out).all() and not torch.isfinite(ours.out).all():
        return "NaN from finite input", "non-finite output from a finite input"
    tol = TIGHT[ours.out.dtype]
    if not _close(ours, out, state, grads, tol):
        details = [f"output off by {_rel_error(ours.out, out):.3g}"]
        details += [f"{k} off by {_rel_error(ours.state[k], v):.3g}" for k, v in state.items()
                    if k in ours.state and v.is_floating_point()]
        details += [f"grad {k} off by {_rel_error(ours.grads[k], v):.3g}" for k, v in grads.items()
                    if v is not None and ours.grads.get(k) is not None]
        return "silent wrong answer", "; ".join(details)
    return expected, ""
