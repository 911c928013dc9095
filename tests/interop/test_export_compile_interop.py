"""A model holding every normalization layer (``Zoo``) through ``torch.export.export`` (then
running the exported program) and ``torch.compile(fullgraph=True)`` through AOT autograd
(``backend="aot_eager"``, the graphs inductor is given), with torch's layers, normlab's, and
normlab's variants: the result computes what the eager model does, output and running
statistics after training steps.

Per layer, tests/nn/test_traceable.py traces, scripts, exports, compiles (``backend="eager"``)
and runs ONNX for each normlab layer; this file adds torch's layers beside normlab's (which
shows the test asks for torch's behaviour), the state an exported program leaves after a
training step, and AOT autograd's functionalization of the running-statistics update.
"""

from __future__ import annotations

import copy

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


MODES = pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])


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
