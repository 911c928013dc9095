"""torch.compile(fullgraph=True) traces normlab's batch norm without a graph break, and the
compiled layer computes what the eager one does, running statistics included."""

import pytest
import torch

import normlab
from conftest import assert_rel


@pytest.mark.slow
@pytest.mark.parametrize("backend", [None, "normlab"])
def test_fullgraph_compile_matches_eager(backend):
    torch._dynamo.reset()
    eager, compiled = normlab.BatchNorm2d(4), normlab.BatchNorm2d(4)
    f = torch.compile(compiled, fullgraph=True, backend="eager")
    gen = torch.Generator().manual_seed(0)
    with normlab.use_backend(backend):
        for _ in range(2):
            x = torch.randn(3, 4, 5, 5, generator=gen) * 2 + 1
            assert_rel(f(x), eager(x), 1e-6, "train output")
        assert_rel(compiled.running_var, eager.running_var, 1e-6, "running_var")
        assert compiled.num_batches_tracked.item() == eager.num_batches_tracked.item() == 2
        compiled.eval(), eager.eval()
        x = torch.randn(3, 4, 5, 5, generator=gen)
        assert_rel(f(x), eager(x), 1e-6, "eval output")


@pytest.mark.slow
def test_the_non_finite_guard_is_the_same_compiled_and_eager():
    """non_finite="skip" (the default) is decided on the device: compiled with fullgraph=True it keeps a
    NaN channel's running statistics as eager mode does, and updates the others alike."""
    torch._dynamo.reset()
    eager, compiled = normlab.BatchNorm2d(3), normlab.BatchNorm2d(3)
    f = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        x = torch.randn(4, 3, 2, 2, generator=gen)
        if step == 1:
            x[0, 1, 0, 0] = float("nan")
        assert_rel(torch.nan_to_num(f(x)), torch.nan_to_num(eager(x)), 1e-6, "output")
        assert torch.isfinite(compiled.running_var).all()
        for (k, a), b in zip(compiled.state_dict().items(), eager.state_dict().values()):
            assert_rel(a, b, 1e-6, f"step {step} {k}")
