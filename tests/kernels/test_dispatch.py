"""The one dispatch place: the automatic choice, forcing a backend, and that forcing takes effect."""

import pytest
import torch

import normlab
from normlab import autograd, kernels


def test_automatic_choice_on_cpu_is_torchs_own_kernel():
    assert normlab.get_backend() is None
    assert kernels.choose("batch_norm", torch.randn(2, 3)) == "native"
    assert kernels.choose("an_op_torch_lacks", torch.randn(2, 3)) == "normlab"


def test_use_backend_is_scoped_and_nests():
    with normlab.use_backend("normlab"):
        assert kernels.choose("batch_norm", torch.randn(2, 3)) == "normlab"
        with normlab.use_backend(None):
            assert kernels.choose("batch_norm", torch.randn(2, 3)) == "native"
        assert normlab.get_backend() == "normlab"
    assert normlab.get_backend() is None


def test_set_backend_until_reset():
    normlab.set_backend("normlab")
    try:
        assert normlab.get_backend() == "normlab"
    finally:
        normlab.set_backend(None)
    assert normlab.get_backend() is None


@pytest.mark.parametrize("forced,own_calls", [(None, 0), ("native", 0), ("normlab", 1)])
def test_the_module_runs_the_chosen_backend(monkeypatch, forced, own_calls):
    calls = []
    real = autograd.Normalize.apply
    monkeypatch.setattr(autograd.Normalize, "apply", lambda *a: calls.append(1) or real(*a))
    with normlab.use_backend(forced):
        normlab.BatchNorm2d(3)(torch.randn(2, 3, 4, 4))
    assert len(calls) == own_calls
