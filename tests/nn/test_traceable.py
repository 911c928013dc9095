"""Every layer traces and exports as torch's own layers do: torch.fx (one call_module node inside a
model; its torch operations when traced alone, where torch's layers give those), torch.export and
the exported program, torch.onnx with onnxruntime, torch.jit.trace, torch.jit.script for the
layers torch's counterparts of script (a clear error for the others), torch.compile(fullgraph).
Each compares outputs and running statistics with the eager layer, in training and in eval."""

import warnings

import pytest
import torch
from torch import nn

import normlab
from conftest import assert_rel

# name -> (build, input shape, torch.jit.script supported, torch.fx traces it alone)
LAYERS = {
    "BatchNorm1d": (lambda: normlab.BatchNorm1d(4), (8, 4, 5), True, True),
    "BatchNorm2d": (lambda: normlab.BatchNorm2d(4), (8, 4, 3, 3), True, True),
    "BatchNorm3d": (lambda: normlab.BatchNorm3d(4), (4, 4, 2, 3, 3), True, True),
    "BatchNorm1d-channel_dim": (lambda: normlab.BatchNorm1d(4, channel_dim=-1), (8, 5, 4), True, True),
    "BatchRenorm2d": (lambda: normlab.BatchRenorm2d(4, warmup_steps=0, rmax_full_at=0, dmax_full_at=0), (8, 4, 3, 3),
                      False, False),
    "GhostBatchNorm": (lambda: normlab.GhostBatchNorm(4, virtual_batch_size=4), (8, 4, 3, 3), False, False),
    "SyncBatchNorm": (lambda: normlab.SyncBatchNorm(4), (8, 4, 3, 3), False, False),
    "BatchNormAct": (lambda: normlab.BatchNormAct(4, "relu"), (8, 4, 3, 3), False, False),
    "BatchNormAct-abn": (lambda: normlab.BatchNormAct(4, "leaky_relu", inplace_abn=True), (8, 4, 3, 3), False, False),
    "FrozenBatchNorm": (lambda: normlab.FrozenBatchNorm(4), (8, 4, 3, 3), True, True),
    "MeanOnlyBatchNorm": (lambda: normlab.MeanOnlyBatchNorm(4), (8, 4, 3, 3), False, False),
    "LayerNorm": (lambda: normlab.LayerNorm(5), (8, 4, 5), True, True),
    "GroupNorm": (lambda: normlab.GroupNorm(2, 4), (8, 4, 3, 3), True, True),
    "InstanceNorm2d": (lambda: normlab.InstanceNorm2d(4, affine=True, track_running_stats=True), (8, 4, 3, 3),
                       True, False),
    "RMSNorm": (lambda: normlab.RMSNorm(5), (8, 4, 5), True, True),
}
IDS = list(LAYERS)


def pair(name, training):
    """Two layers with the same non-trivial state, and an input."""
    build, shape, *_ = LAYERS[name]
    gen = torch.Generator().manual_seed(0)
    ours, ref = build(), build()
    with torch.no_grad():
        for t in ours.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
    ref.load_state_dict(ours.state_dict())
    x = 3 * torch.randn(shape, generator=gen) + 1
    return ours.train(training), ref.train(training), x


def same_state(a, b):
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert_rel(v, w, 1e-6, k)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", IDS)
def test_fx_records_the_layer_as_one_call(name, training):
    layer, ref, x = pair(name, training)
    graph = torch.fx.symbolic_trace(nn.Sequential(nn.Identity(), layer))
    calls = [n for n in graph.graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["0", "1"], "a leaf, as torch.nn's own layers are"
    assert graph.get_submodule("1") is layer
    assert_rel(graph(x), ref(x), 1e-6, "output")
    same_state(layer, ref)


@pytest.mark.parametrize("name", IDS)
def test_fx_traces_a_layer_alone_into_torch_operations_or_says_why_not(name):
    layer, ref, x = pair(name, True)
    if not LAYERS[name][3]:
        with pytest.raises(RuntimeError, match=r"torch.fx traces this layer as one call inside a model"):
            torch.fx.symbolic_trace(layer)
        return
    graph = torch.fx.symbolic_trace(layer)
    assert not [n for n in graph.graph.nodes if n.op == "call_module"]
    assert_rel(graph(x), ref(x), 1e-6, "output")
    same_state(layer, ref)
    if "mask" in graph.code:  # the optional argument stays unused
        with pytest.raises(RuntimeError, match="traced without the layer's optional argument"):
            graph(x, torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", IDS)
def test_export_and_run_the_exported_program(name, training):
    layer, ref, x = pair(name, training)
    program = torch.export.export(layer, (x,))
    assert_rel(program.module()(x), ref(x), 1e-6, "output")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", IDS)
def test_jit_trace(name, training):
    layer, ref, x = pair(name, training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, (x,), check_trace=False)
    if training:  # tracing ran it once: compare the state, then one more step
        ref(x)
        same_state(layer, ref)
    assert_rel(traced(x), ref(x), 1e-6, "output")
    same_state(layer, ref)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", IDS)
def test_jit_script_where_torch_scripts(name, training):
    layer, ref, x = pair(name, training)
    if not LAYERS[name][2]:
        with pytest.raises(RuntimeError, match="torch.jit.script is not supported"):
            torch.jit.script(layer)
        return
    scripted = torch.jit.script(layer)
    for _ in range(2):
        assert_rel(scripted(x), ref(x), 1e-6, "output")
    same_state(scripted, ref)


def test_scripted_batch_norm_keeps_the_guard_and_the_freeze():
    bn = torch.jit.script(normlab.BatchNorm1d(2))
    x = torch.tensor([[1.0, float("nan")], [2.0, 1.0]])
    bn(x)
    assert torch.isfinite(bn.running_var).all() and bn.running_mean[0] != 0
    frozen = normlab.BatchNorm1d(2)
    frozen.freeze("statistics")
    scripted = torch.jit.script(frozen)
    scripted(torch.randn(4, 2))
    assert torch.equal(scripted.running_mean, torch.zeros(2))


def test_script_refuses_what_it_cannot_compile():
    with pytest.raises(RuntimeError, match=r"one_value_per_channel='raise' only"):
        torch.jit.script(normlab.BatchNorm1d(2, one_value_per_channel="skip_update"))
    with pytest.raises(RuntimeError, match="torch.jit.script is not supported"):
        torch.jit.script(nn.Sequential(nn.Linear(2, 2), normlab.BatchNormAct(2)))


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", IDS)
def test_compile_fullgraph(name, training):
    torch._dynamo.reset()
    layer, ref, x = pair(name, training)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    for _ in range(2):
        assert_rel(compiled(x), ref(x), 1e-6, "output")
    same_state(layer, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", IDS)
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    layer, _, x = pair(name, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(layer, (x,), dynamo=True, verbose=False)
    path = tmp_path / "layer.onnx"
    program.save(str(path))
    session = ort.InferenceSession(str(path))
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_rel(torch.from_numpy(y), layer(x), 1e-5, "onnxruntime vs eager")


def test_checks_stay_in_eager_mode_with_clear_messages():
    """The traced forms run the layer's own code: a wrong input still gets the layer's message."""
    model = torch.fx.symbolic_trace(nn.Sequential(nn.Identity(), normlab.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(4\): expected a 4-D \(N, C, H, W\) input, got a 3-D"):
        model(torch.randn(2, 4, 3))
