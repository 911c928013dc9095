"""PT2E quantization (export, ``prepare_pt2e`` / ``prepare_qat_pt2e``, ``convert_pt2e``) of
conv + batch norm (+ ReLU), with torch's layers and normlab's.

PT2E works on the exported graph, where a batch norm is an ``aten.batch_norm`` call
whichever module made it, so post-training quantization needs nothing from normlab. In
torch 2.13 PT2E lives in torchao (``torchao.quantization.pt2e``); torch 2.4 still has it
as ``torch.ao.quantization.quantize_pt2e``. Two things of QAT see more than the
graph: torchao's conv + bn fold wants the running statistics as the plain buffer reads
torch's layer exports (normlab's default ``non_finite="skip"`` guard reads them through a
select), and the quantizer finds conv + bn by the module class export records for each node
(exact class: the QAT test adds normlab's to the quantizer's table of equivalent types,
``update_equivalent_types_dict``, as a user does; without it the last conv + bn output is
left unquantized where torch's is quantized, seen while writing this test, not checked here).
"""

import copy

import pytest
import torch
from torch import nn

import normlab
from conftest import assert_rel
from interop_cases import BOTH, rand, randomize

try:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.graph_utils import get_equivalent_types, update_equivalent_types_dict
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
except ImportError:  # no torchao: torch.ao's own copy (torch 2.4)
    try:
        from torch.ao.quantization import move_exported_model_to_eval
        from torch.ao.quantization.pt2e.graph_utils import get_equivalent_types, update_equivalent_types_dict
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
        from torch.ao.quantization.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError:
        pytest.skip("neither torchao nor this torch has PT2E quantization", allow_module_level=True)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def capture(model, x):
    """The graph PT2E quantizes: export's training IR, by the name this torch gives it."""
    if hasattr(torch.export, "export_for_training"):
        return torch.export.export_for_training(model, (x,)).module()
    try:
        from torch._export import capture_pre_autograd_graph  # torch 2.4
    except ImportError:  # torch 2.13: export's own graph is the training IR
        return torch.export.export(model, (x,)).module()
    return capture_pre_autograd_graph(model, (x,))


def conv_bn_net(lib, **bn_options):
    torch.manual_seed(0)
    x = rand(2, 3, 8, 7)
    bn = (lambda c: lib.BatchNorm2d(c, **bn_options)) if lib is normlab else nn.BatchNorm2d
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bn(4), nn.ReLU(), nn.Conv2d(4, 4, 3), bn(4))
    return randomize(model, x), x


def quantized(lib, qat: bool, **bn_options):
    model, x = conv_bn_net(lib, **bn_options)
    model.train(qat)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=qat))
    prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(capture(copy.deepcopy(model), x), quantizer)
    prepared(x)  # calibration, or one QAT step
    result = convert_pt2e(prepared)
    if qat:
        move_exported_model_to_eval(result)
    return result, x


def batch_norm_calls(graph_module):
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]


@pytest.fixture
def normlab_batch_norm_equivalent():
    """normlab's BatchNorm2d in the PT2E quantizer's set of classes that mean a batch norm;
    the table restored after the test."""
    saved = [set(s) for s in get_equivalent_types()]
    update_equivalent_types_dict([s | {normlab.BatchNorm2d} if nn.BatchNorm2d in s else s for s in saved])
    yield
    update_equivalent_types_dict(saved)


@BOTH
def test_post_training_quantization_folds_batch_norm_as_for_torch_layers(lib):
    result, x = quantized(lib, qat=False)
    torch_result, _ = quantized(nn, qat=False)
    assert batch_norm_calls(result) == []
    assert result.code == torch_result.code  # the same quantized graph, node for node
    with torch.no_grad():
        assert_rel(result(x), torch_result(x), 0, "quantized output, against torch's layers'")


@pytest.mark.slow  # prepare_qat_pt2e rewrites the graph with patterns it exports first: about a minute a run
def test_qat_with_torch_s_behaviour_on_non_finite_batches_and_the_class_known(normlab_batch_norm_equivalent):
    """``non_finite="propagate"`` (what torch's layer does) exports torch's graph; with the class
    in the quantizer's table, QAT quantizes as it does torch's layers."""
    result, x = quantized(normlab, qat=True, non_finite="propagate")
    torch_result, _ = quantized(nn, qat=True)
    assert batch_norm_calls(result) == []
    with torch.no_grad():
        assert_rel(result(x), torch_result(x), 1e-6, "QAT-converted output, against torch's layers'")


@pytest.mark.slow
def test_qat_convert_refuses_the_default_non_finite_guard(normlab_batch_norm_equivalent):
    """The default guard (``non_finite="skip"``) updates the running statistics through a select
    on them, which torchao's conv + bn fold does not take for the layer's buffers."""
    with pytest.raises((ValueError, AssertionError)) as refused:
        quantized(normlab, qat=True)
    # torchao says so in words; torch 2.4's own copy asserts that the running statistics are a get_attr
    assert "get_attr" in str(refused.value) or refused.traceback[-1].name == "_get_tensor_constant_from_node"
