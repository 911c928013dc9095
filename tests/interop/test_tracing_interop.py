"""Tracing, exporting and compiling models with normalization layers: ``torch.fx.symbolic_trace``,
``torch.jit.trace``, ``torch.jit.script``, ``torch.export.export`` (then running the exported
program), ``torch.compile(fullgraph=True)`` and ``torch.onnx.export`` run in onnxruntime.

Each tool runs on torch's layer and on normlab's, and on normlab's variants; what comes out
must compute what the eager layer does: the same output, in training the same running
statistics after the step. The costly tools (export, compile, ONNX) take one model holding
every layer (``Zoo``), one program per kind of layer set and mode.
"""

from __future__ import annotations

import copy
import inspect
import io
import warnings

import pytest
import torch
from torch import nn

import normlab
from conftest import assert_rel
from interop_cases import rand, randomize

X_SHAPE = (6, 4, 5, 3)  # every layer sees this input, reshaped: (6, 4, 15) for 1-d, (6, 4, 1, 5, 3) for 3-d
TO_1D, TO_3D = (lambda: nn.Flatten(2)), (lambda: nn.Unflatten(2, (1, 5)))


def layers(lib) -> dict[str, nn.Module]:
    """Every normalization torch and normlab both have, each behind the reshape its input needs."""
    made = {
        "BatchNorm1d": nn.Sequential(TO_1D(), lib.BatchNorm1d(4)),
        "BatchNorm2d": nn.Sequential(lib.BatchNorm2d(4)),
        "BatchNorm3d": nn.Sequential(TO_3D(), lib.BatchNorm3d(4, momentum=0.2)),
        "SyncBatchNorm": nn.Sequential(lib.SyncBatchNorm(4)),  # no process group: batch norm
        "InstanceNorm1d": nn.Sequential(TO_1D(), lib.InstanceNorm1d(4)),
        "InstanceNorm2d": nn.Sequential(lib.InstanceNorm2d(4, affine=True, track_running_stats=True)),
        "InstanceNorm3d": nn.Sequential(TO_3D(), lib.InstanceNorm3d(4, affine=True)),
        "LayerNorm": nn.Sequential(lib.LayerNorm([5, 3])),
        "GroupNorm": nn.Sequential(lib.GroupNorm(2, 4)),
    }
    if hasattr(nn, "RMSNorm"):
        made["RMSNorm"] = nn.Sequential(lib.RMSNorm([5, 3], eps=1e-6))
    return made


def variants() -> dict[str, nn.Module]:
    """normlab's layers that torch has not."""
    return {
        "BatchRenorm2d": nn.Sequential(normlab.BatchRenorm2d(4, warmup_steps=0, rmax_full_at=0, dmax_full_at=0)),
        "GhostBatchNorm": nn.Sequential(normlab.GhostBatchNorm(4, virtual_batch_size=4)),
        "BatchNormAct": nn.Sequential(normlab.BatchNormAct(4, "relu")),
        "FrozenBatchNorm": nn.Sequential(normlab.FrozenBatchNorm(4)),
        "SyncBatchRenorm": nn.Sequential(normlab.SyncBatchRenorm(4, warmup_steps=0, rmax_full_at=0, dmax_full_at=0)),
    }


def prepared(module: nn.Module, training: bool) -> nn.Module:
    """``module`` with state away from its initial values, in the given mode."""
    return randomize(module, rand(*X_SHAPE, seed=3)).train(training)


def assert_same_state(actual: nn.Module, expected: nn.Module, rel: float = 1e-6):
    theirs = dict(expected.named_buffers())
    for name, buffer in actual.named_buffers():
        assert_rel(buffer, theirs[name], 0 if not buffer.is_floating_point() else rel, f"buffer {name}")


def cases(with_variants: bool):
    """(lib name, layer name) pairs: torch's and normlab's for every shared layer, then normlab's variants."""
    names = list(layers(nn))
    pairs = [("torch", n) for n in names] + [("normlab", n) for n in names]
    return pairs + [("normlab", n) for n in variants()] if with_variants else pairs


def build(lib_name: str, name: str, training: bool) -> nn.Module:
    torch.manual_seed(0)
    made = variants()[name] if name in variants() else layers(nn if lib_name == "torch" else normlab)[name]
    return prepared(made, training)


MODES = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
CASES = pytest.mark.parametrize("lib_name, name", cases(with_variants=True))


# --- per layer: fx, jit.trace, jit.script ------------------------------------------------------


@MODES
@CASES
def test_fx_symbolic_trace(lib_name, name, training):
    eager = build(lib_name, name, training)
    traced = torch.fx.symbolic_trace(copy.deepcopy(eager))
    x = rand(*X_SHAPE, seed=4)
    assert_rel(traced(x), eager(x), 1e-6, "output")
    assert_same_state(traced, eager)


@CASES
def test_jit_trace(lib_name, name):
    eager = build(lib_name, name, training=False)
    x = rand(*X_SHAPE, seed=4)
    traced = torch.jit.trace(copy.deepcopy(eager), (x,))
    y = rand(*X_SHAPE, seed=5)
    assert_rel(traced(y), eager(y), 1e-6, "output on another input")


def scripts(module: nn.Module) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated from torch 2.10 on
            torch.jit.script(copy.deepcopy(module))
        return True
    except RuntimeError:
        return False


@MODES
@CASES
def test_jit_script(lib_name, name, training):
    """Where torch's layer scripts, normlab's scripts and computes the same; where torch's does not
    (SyncBatchNorm, normlab's variants, which torch has not), normlab's either scripts and
    computes the same or raises a RuntimeError naming the layer."""
    eager = build(lib_name, name, training)
    required = name in layers(nn) and scripts(build("torch", name, training))
    if not required and not scripts(eager):
        with pytest.raises(RuntimeError, match=type(eager[-1]).__name__), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(copy.deepcopy(eager))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(copy.deepcopy(eager))
    x = rand(*X_SHAPE, seed=4)
    assert_rel(scripted(x), eager(x), 1e-6, "output")
    assert_same_state(scripted, eager)


# --- every layer in one model: torch.export, torch.compile, ONNX ----------------------------------


class Zoo(nn.Module):
    """Each of ``models`` applied to the same input; the outputs in a tuple."""

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict(models)

    def forward(self, x):
        return tuple(m(x) for m in self.models.values())


def zoo(kind: str, training: bool) -> Zoo:
    torch.manual_seed(0)
    models = variants() if kind == "variants" else layers(nn if kind == "torch" else normlab)
    return Zoo({name: prepared(m, training) for name, m in models.items()}).train(training)


ZOOS = pytest.mark.parametrize("kind", ["torch", "normlab", "variants"])


def assert_same_outputs(actual, expected, rel=1e-6):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel(a, e, rel, f"output {i}")


@pytest.mark.slow
@MODES
@ZOOS
def test_torch_export(kind, training):
    eager = zoo(kind, training)
    x = rand(*X_SHAPE, seed=4)
    program = torch.export.export(copy.deepcopy(eager), (x,))
    exported = program.module()
    assert_same_outputs(exported(x), eager(x))
    assert_same_state(exported, eager)


@pytest.mark.slow
@MODES
@ZOOS
def test_torch_compile_fullgraph(kind, training):
    """Without a graph break, through AOT autograd (what inductor is given)."""
    torch._dynamo.reset()
    eager = zoo(kind, training)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    for seed in (4, 5):
        x = rand(*X_SHAPE, seed=seed)
        assert_same_outputs(compiled(x), eager(x))
    assert_same_state(compiled_model, eager)


@pytest.mark.slow
@ZOOS
def test_onnx_export_runs_in_onnxruntime(kind):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    eager = zoo(kind, training=False)
    x = rand(*X_SHAPE, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress and deprecation notes
        if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5: the exporter users get
            model = torch.onnx.export(copy.deepcopy(eager), (x,), dynamo=True, verbose=False).model_proto
            model = model.SerializeToString()
        else:  # torch 2.4: TorchScript-based
            buffer = io.BytesIO()
            torch.onnx.export(copy.deepcopy(eager), (x,), buffer)
            model = buffer.getvalue()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_same_outputs([torch.from_numpy(o) for o in outputs], eager(x), 1e-5)
