"""torch.ao quantization's fusions with batch norm: eager ``fuse_modules`` (inference) and
``fuse_modules_qat`` (quantization-aware training), and FX graph mode (``fuse_fx``,
``prepare_fx``, ``prepare_qat_fx``, ``convert_fx``).

Eager fusion finds its fuser by the exact ``(type(conv), type(bn), ...)``; normlab's
batch norms are in that table because ``normlab.nn.interop`` puts them there when
normlab.nn is imported (a user does nothing). FX graph mode matches its patterns by exact
class in a backend config that torch builds afresh on every call, so it is given
``normlab.nn.interop.backend_config()``: torch's native config with normlab's batch norms
beside torch's. The torch run of each FX test passes the same config, which must change
nothing for torch's layers; the normlab run is compared with torch's layers given torch's
own config.
"""

import copy

import pytest
import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.intrinsic.qat as nniqat
from torch import nn
from torch.ao.quantization import (
    disable_fake_quant,
    disable_observer,
    fuse_modules,
    fuse_modules_qat,
    get_default_qat_qconfig,
    get_default_qat_qconfig_mapping,
    get_default_qconfig_mapping,
    prepare_qat,
)
from torch.ao.quantization.backend_config import get_native_backend_config
from torch.ao.quantization.quantize_fx import convert_fx, fuse_fx, prepare_fx, prepare_qat_fx

import normlab
from normlab.nn.interop import backend_config
from conftest import assert_rel
from interop_cases import BOTH, CONV, CONV_TRANSPOSE, SPATIAL, batch_norm, norm_types, rand, randomize

# torch.ao.quantization warns of its move to torchao, and is still there (2.13)
pytestmark = pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")

ENGINE = torch.backends.quantized.engine  # x86 on x86 machines, qnnpack on ARM
CONV_RELU = {1: nni.ConvReLU1d, 2: nni.ConvReLU2d, 3: nni.ConvReLU3d}
CONV_BN_QAT = {1: nniqat.ConvBn1d, 2: nniqat.ConvBn2d, 3: nniqat.ConvBn3d}
CONV_BN_RELU_QAT = {1: nniqat.ConvBnReLU1d, 2: nniqat.ConvBnReLU2d, 3: nniqat.ConvBnReLU3d}
BN_RELU = {2: nni.BNReLU2d, 3: nni.BNReLU3d}


def conv_bn(lib, dim, relu=True, transpose=False):
    torch.manual_seed(0)
    conv = (CONV_TRANSPOSE if transpose else CONV)[dim](3, 4, 3)
    layers = [conv, batch_norm(lib, dim, 4)] + ([nn.ReLU()] if relu else [])
    x = rand(2, 3, *SPATIAL[dim])
    return randomize(nn.Sequential(*layers), x), x


# --- eager mode: inference ---------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_fuse_modules_folds_conv_bn_relu_for_inference(lib, dim):
    model, x = conv_bn(lib, dim)
    model.eval()
    fused = fuse_modules(model, [["0", "1", "2"]])
    assert type(fused[0]) is CONV_RELU[dim] and type(fused[1]) is type(fused[2]) is nn.Identity
    assert norm_types(fused) == []
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "fused output")


@BOTH
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("transpose", [False, True])
def test_fuse_modules_folds_conv_bn_for_inference(lib, dim, transpose):
    model, x = conv_bn(lib, dim, relu=False, transpose=transpose)
    model.eval()
    fused = fuse_modules(model, [["0", "1"]])
    assert type(fused[0]) is type(model[0]) and type(fused[1]) is nn.Identity
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "fused output")


@BOTH
def test_fuse_modules_folds_linear_bn_for_inference(lib):
    torch.manual_seed(0)
    x = rand(8, 5)
    model = randomize(nn.Sequential(nn.Linear(5, 4), lib.BatchNorm1d(4)), x).eval()
    fused = fuse_modules(model, [["0", "1"]])
    assert type(fused[0]) is nn.Linear and type(fused[1]) is nn.Identity
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-5, "fused output")


@BOTH
@pytest.mark.parametrize("dim", [2, 3])
def test_fuse_modules_fuses_bn_relu(lib, dim):
    x = rand(2, 4, *SPATIAL[dim])
    model = randomize(nn.Sequential(batch_norm(lib, dim, 4), nn.ReLU()), x).eval()
    fused = fuse_modules(model, [["0", "1"]])
    assert type(fused[0]) is BN_RELU[dim]
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-6, "fused output")


@BOTH
def test_fused_model_quantizes_end_to_end(lib):
    """Post-training static quantization: fuse, observe, convert; the quantized conv computes
    what the float model does, to quantization error."""
    model, x = conv_bn(lib, 2)
    model = nn.Sequential(torch.ao.quantization.QuantStub(), *model, torch.ao.quantization.DeQuantStub()).eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(ENGINE)
    fused = fuse_modules(model, [["1", "2", "3"]])
    prepared = torch.ao.quantization.prepare(fused)
    with torch.no_grad():
        prepared(x)
    quantized = torch.ao.quantization.convert(prepared)
    assert type(quantized[1]).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    with torch.no_grad():
        assert_rel(quantized(x), model(x), 0.05, "quantized output")


@BOTH
@pytest.mark.parametrize("dim", [2, 3])
def test_an_unfused_batch_norm_quantizes_to_torch_s_quantized_batch_norm(lib, dim):
    """Eager static quantization of a batch norm with nothing before it to fold into: prepare
    observes it and convert swaps it for torch's quantized batch norm, normlab's as torch's,
    and the quantized models compute the same."""
    def quantized(lib):
        torch.manual_seed(0)
        conv = CONV[dim](3, 4, 3)
        model = nn.Sequential(torch.ao.quantization.QuantStub(), conv, nn.ReLU(), batch_norm(lib, dim, 4),
                              torch.ao.quantization.DeQuantStub())
        model = randomize(model, x).eval()
        model.qconfig = torch.ao.quantization.get_default_qconfig(ENGINE)
        prepared = torch.ao.quantization.prepare(model)
        with torch.no_grad():
            prepared(x)
        return torch.ao.quantization.convert(prepared)

    x = rand(2, 3, *SPATIAL[dim])
    ours, theirs = quantized(lib), quantized(nn)
    assert type(ours[3]) is type(theirs[3]) is getattr(torch.ao.nn.quantized, f"BatchNorm{dim}d")
    with torch.no_grad():
        assert_rel(ours(x), theirs(x), 1e-6, "quantized model, against torch's")


# --- eager mode: quantization-aware training --------------------------------------------------------


@BOTH
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("relu", [False, True])
def test_fuse_modules_qat_trains_as_conv_then_batch_norm(lib, dim, relu):
    """fuse_modules_qat then prepare_qat give torch's QAT ConvBn(ReLU), holding the layer's
    parameters and running statistics; with fake quantization off, a training step computes
    what conv then batch norm (then ReLU) do, and updates the running statistics alike."""
    model, x = conv_bn(lib, dim, relu)
    model.train()
    reference = copy.deepcopy(model)
    names = ["0", "1", "2"] if relu else ["0", "1"]
    fused = fuse_modules_qat(model, [names])
    assert type(fused[0]).__name__ == f"ConvBn{'ReLU' if relu else ''}{dim}d"
    fused.qconfig = get_default_qat_qconfig(ENGINE)
    prepared = prepare_qat(fused)
    qat = prepared[0]
    assert type(qat) is (CONV_BN_RELU_QAT if relu else CONV_BN_QAT)[dim]
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert_rel(getattr(qat.bn, name), getattr(reference[1], name), 0, f"bn.{name} carried over")
    prepared.apply(disable_fake_quant), prepared.apply(disable_observer)
    out, expected = prepared(x), reference(x)
    assert_rel(out, expected, 1e-4, "training output")
    assert_rel(qat.bn.running_mean, reference[1].running_mean, 1e-5, "running_mean")
    assert_rel(qat.bn.running_var, reference[1].running_var, 1e-5, "running_var")
    assert qat.bn.num_batches_tracked.item() == reference[1].num_batches_tracked.item()


# --- FX graph mode ---------------------------------------------------------------------------------


class Net(nn.Module):
    """conv -> bn -> relu, conv -> bn, a residual sum, linear -> bn1d: the patterns FX fuses."""

    def __init__(self, lib):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 4, 3, padding=1), lib.BatchNorm2d(4), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), lib.BatchNorm2d(4)
        self.fc, self.bn3 = nn.Linear(4 * 6 * 5, 3), lib.BatchNorm1d(3)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + y
        return self.bn3(self.fc(y.flatten(1)))


def fx_model(lib):
    torch.manual_seed(0)
    x = rand(4, 3, 6, 5)
    return randomize(Net(lib), x), x


def with_torch_layers(model):
    """A copy of ``model`` with torch's layers in place of normlab's: what torch's own FX
    quantization, given no configuration, does to the same network."""
    return normlab.convert(copy.deepcopy(model), to="torch")


def submodule_types(graph_module):
    return [type(m) for m in list(graph_module.modules())[1:]]  # the root's class fx makes anew


@BOTH
def test_fuse_fx_folds_every_batch_norm_as_torch_does(lib):
    model, x = fx_model(lib)
    model.eval()
    fused = fuse_fx(copy.deepcopy(model), backend_config=backend_config())
    torch_fused = fuse_fx(with_torch_layers(model))
    assert norm_types(fused) == []  # each batch norm folded into the conv or linear before it
    assert submodule_types(fused) == submodule_types(torch_fused)
    assert nni.ConvReLU2d in submodule_types(fused)
    with torch.no_grad():
        assert_rel(fused(x), torch_fused(x), 1e-6, "fused output, against torch's fused model")
        assert_rel(fused(x), model(x), 1e-5, "fused output, against the model")


@BOTH
@pytest.mark.parametrize("dim", [2, 3])
def test_fuse_fx_fuses_bn_relu(lib, dim):
    x = rand(2, 4, *SPATIAL[dim])
    model = randomize(nn.Sequential(batch_norm(lib, dim, 4), nn.ReLU()), x).eval()
    fused = fuse_fx(copy.deepcopy(model), backend_config=backend_config())
    assert type(fused.get_submodule("0")) is BN_RELU[dim]
    with torch.no_grad():
        assert_rel(fused(x), model(x), 1e-6, "fused output")


@BOTH
def test_prepare_fx_fuses_conv_bn_and_quantizes_as_torch_does(lib):
    model, x = fx_model(lib)
    model.eval()
    expected = model(x).detach()
    config = backend_config()
    qconfig_mapping = get_default_qconfig_mapping(ENGINE)
    prepared = prepare_fx(copy.deepcopy(model), qconfig_mapping, (x,), backend_config=config)
    torch_prepared = prepare_fx(with_torch_layers(model), qconfig_mapping, (x,))
    assert nni.ConvReLU2d in submodule_types(prepared) and norm_types(prepared) == []  # every bn folded away
    assert submodule_types(prepared) == submodule_types(torch_prepared)
    with torch.no_grad():
        assert_rel(prepared(x), expected, 1e-5, "observed model")
        torch_prepared(x)
        quantized = convert_fx(prepared, backend_config=config)
        torch_quantized = convert_fx(torch_prepared)
        assert submodule_types(quantized) == submodule_types(torch_quantized)
        assert_rel(quantized(x), torch_quantized(x), 1e-6, "quantized model, against torch's")
        assert_rel(quantized(x), expected, 0.05, "quantized model, against the float model")


@BOTH
def test_prepare_qat_fx_trains_as_the_float_model(lib):
    model, x = fx_model(lib)
    model.train()
    reference = copy.deepcopy(model)
    prepared = prepare_qat_fx(model, get_default_qat_qconfig_mapping(ENGINE), (x,), backend_config=backend_config())
    fused = set(submodule_types(prepared))
    assert {nniqat.ConvBnReLU2d, nniqat.ConvBn2d} <= fused
    prepared.apply(disable_fake_quant), prepared.apply(disable_observer)
    assert_rel(prepared(x), reference(x), 1e-4, "training output")
    qat_bn = [m.bn for m in prepared.modules() if isinstance(m, (nniqat.ConvBnReLU2d, nniqat.ConvBn2d))]
    assert qat_bn[0].running_var is model.bn1.running_var  # the layer's own buffer, trained in place
    assert_rel(qat_bn[0].running_var, reference.bn1.running_var, 1e-5, "bn1.running_var")


@BOTH
def test_a_lone_batch_norm_quantizes_to_the_same_output(lib):
    """A batch norm with nothing before it to fold into: torch's lowering turns torch's into its
    quantized batch norm (a fixed list of torch's classes); normlab's stays in floating point
    between a dequantize and a quantize, and the quantized model computes the same."""
    torch.manual_seed(0)
    x = rand(2, 3, 6, 5)
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), lib.BatchNorm2d(4), nn.Conv2d(4, 2, 1)), x).eval()
    config = backend_config()
    qconfig_mapping = get_default_qconfig_mapping(ENGINE)
    prepared = prepare_fx(copy.deepcopy(model), qconfig_mapping, (x,), backend_config=config)
    torch_prepared = prepare_fx(with_torch_layers(model), qconfig_mapping, (x,))
    with torch.no_grad():
        prepared(x), torch_prepared(x)
    quantized, torch_quantized = convert_fx(prepared, backend_config=config), convert_fx(torch_prepared)
    lone = type(quantized.get_submodule("2"))
    assert lone is (torch.ao.nn.quantized.BatchNorm2d if lib is nn else normlab.BatchNorm2d)
    with torch.no_grad():
        assert_rel(quantized(x), torch_quantized(x), 1e-6, "quantized model, against torch's")


def test_backend_config_adds_normlab_patterns_and_keeps_torch_s():
    native = get_native_backend_config()
    before = [c.pattern for c in native.configs]
    config = backend_config(native)
    patterns = [c.pattern for c in config.configs]
    assert [c.pattern for c in native.configs] == before  # the base is not modified
    assert set(before) < set(patterns)
    assert (nn.Conv2d, normlab.BatchNorm2d, nn.ReLU) in patterns and (nn.Linear, normlab.BatchNorm1d) in patterns
    torch_batch_norms = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}
    with_torch_bn = [p for p in before if torch_batch_norms & set(p if isinstance(p, tuple) else (p,))]
    assert len(patterns) == len(before) + len(with_torch_bn)  # one normlab twin for each


def test_fx_quantization_without_the_backend_config_leaves_normlab_layers_unfused():
    """What :func:`backend_config` is for: torch's own config matches its fusion patterns by
    exact class, so a normlab batch norm is not fused with its conv. The prepared model still
    computes the float model (the layers are one call in FX quantization's graph); nothing is
    folded."""
    model, x = fx_model(normlab)
    model.eval()
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping(ENGINE), (x,))
    assert nni.ConvReLU2d not in submodule_types(prepared) and normlab.BatchNorm2d in submodule_types(prepared)
    with torch.no_grad():
        assert_rel(prepared(x), model(x), 1e-5, "observed model")
