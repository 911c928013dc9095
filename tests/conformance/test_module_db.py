"""normlab's layers on PyTorch's own test inputs: every ``ModuleInfo`` of
``torch.testing._internal.common_modules.module_db`` whose class normlab also has
(BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d, LayerNorm, GroupNorm, RMSNorm, whatever this
torch lists), each of its ``ModuleInput``s, in float32 and float64, training and eval.

For each, torch's layer and normlab's are built from the same constructor arguments
(normlab's then loads torch's ``state_dict``) and run on the same input; they must agree on
the ``state_dict`` keys, the output, the gradients of the input and of the parameters for
the same output gradient, and the buffers after the step. Tolerances are relative to the
largest value compared: 1e-5 in float32 (normlab's own kernels accumulate differently from
torch's), 1e-10 in float64. And every input of the class's ``module_error_inputs_func``
makes normlab raise where torch does -- on construction or on the forward pass -- an
instance of torch's exception type (normlab's messages are its own).
"""

from __future__ import annotations

import pytest
import torch

import normlab
from conftest import assert_rel

common_modules = pytest.importorskip("torch.testing._internal.common_modules")  # needs expecttest
# Importing torch's test utilities freezes torch.backends' flags for the process (its own suite
# sets them in context managers only); give them back to the rest of this process's tests.
torch.backends.__allow_nonbracketed_mutation_flag = True

DTYPES = {torch.float32: 1e-5, torch.float64: 1e-10}
FORWARD = common_modules.ModuleErrorEnum.FORWARD_ERROR
MODULE_INFOS = [
    info for info in common_modules.module_db
    if "Norm" in info.module_cls.__name__ and isinstance(getattr(normlab, info.module_cls.__name__, None), type)
]  # fmt: skip


def inputs(info, dtype, training, error=False):
    make = info.module_error_inputs_func if error else info.module_inputs_func
    if make is None:
        return []
    return make(info, device="cpu", dtype=dtype, requires_grad=True, training=training)


def torch_forward_raises(info, case, dtype, training: bool) -> bool:
    """Whether torch's layer, built from the error input, raises its declared error on forward."""
    error = case.module_error_input
    try:
        layer = build(info.module_cls, error.constructor_input, dtype).train(training)
        layer(*fresh(error.forward_input.args), **fresh(error.forward_input.kwargs))
    except case.error_type:
        return True
    return False


def cases(error=False):
    """One pytest case per (ModuleInfo, dtype, mode, input), named after torch's desc; for error
    inputs, those on which torch's layer raises in that mode."""
    for info in MODULE_INFOS:
        for dtype in DTYPES:
            if dtype not in info.dtypes:
                continue
            for training in (True, False):
                for i, case in enumerate(inputs(info, dtype, training, error)):
                    if error and case.error_on == FORWARD and not torch_forward_raises(info, case, dtype, training):
                        continue  # e.g. eps=0, refused by torch in training only
                    desc = (case.module_error_input if error else case).desc or "default"
                    name = f"{info.name}-{str(dtype)[6:]}-{'train' if training else 'eval'}-{i}-{desc}"
                    yield pytest.param(info, dtype, training, i, id=name)


def fresh(value):
    """A leaf copy of every tensor in ``value`` (requiring grad where the original does)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: fresh(v) for k, v in value.items()}
    return value


def tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    return []


def build(cls, constructor, dtype):
    return cls(*constructor.args, **constructor.kwargs).to(dtype)


def step(module, forward_input, grad_seed=0):
    """The outputs, and the gradients of the inputs and parameters for a fixed output gradient."""
    args, kwargs = fresh(forward_input.args), fresh(forward_input.kwargs)
    outputs = tensors(module(*args, **kwargs))
    leaves = [t for t in tensors((args, kwargs)) if t.requires_grad] + [p for p in module.parameters()]
    differentiable = [o for o in outputs if o.requires_grad]
    grads = []
    if differentiable and leaves:
        gen = torch.Generator().manual_seed(grad_seed)
        grad_outputs = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in differentiable]
        grads = torch.autograd.grad(differentiable, leaves, grad_outputs, allow_unused=True)
    return outputs, grads


@pytest.mark.parametrize("info, dtype, training, index", list(cases()))
def test_module_input_matches_torch(info, dtype, training, index):
    case = inputs(info, dtype, training)[index]
    torch_layer = build(info.module_cls, case.constructor_input, dtype).train(training)
    ours = build(getattr(normlab, info.module_cls.__name__), case.constructor_input, dtype).train(training)
    assert list(ours.state_dict()) == list(torch_layer.state_dict()), "state_dict keys"
    ours.load_state_dict(torch_layer.state_dict())
    rel = DTYPES[dtype]
    expected, expected_grads = step(torch_layer, case.forward_input)
    actual, actual_grads = step(ours, case.forward_input)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype, "output dtype"
        assert_rel(a, e, rel, "output")
    assert len(actual_grads) == len(expected_grads)
    for i, (a, e) in enumerate(zip(actual_grads, expected_grads)):
        assert (a is None) == (e is None), f"gradient {i} defined in one layer only"
        if e is not None:
            assert_rel(a, e, rel, f"gradient {i}")
    theirs = dict(torch_layer.named_buffers())
    for name, buffer in ours.named_buffers():
        assert_rel(buffer, theirs[name], 0 if buffer.dtype == torch.long else rel, f"buffer {name} after the step")
    assert dict(ours.named_buffers()).keys() == theirs.keys()


@pytest.mark.parametrize("info, dtype, training, index", list(cases(error=True)))
def test_module_error_input_raises_as_in_torch(info, dtype, training, index):
    case = inputs(info, dtype, training, error=True)[index]
    cls = getattr(normlab, info.module_cls.__name__)
    constructor, forward = case.module_error_input.constructor_input, case.module_error_input.forward_input
    if case.error_on != FORWARD:
        with pytest.raises(case.error_type):
            build(cls, constructor, dtype)
        return
    unusable = all(torch_forward_raises(info, case, dtype, mode) for mode in (True, False))
    with pytest.raises(case.error_type):
        try:
            layer = build(cls, constructor, dtype).train(training)
        except case.error_type:
            if unusable:
                raise
            pytest.fail(f"normlab refuses to build what torch builds and runs in the other mode: {constructor.kwargs}")
        layer(*fresh(forward.args), **fresh(forward.kwargs))
