"""FSDP's mixed precision keeps batch norms in full precision: ``MixedPrecision``'s
``_module_classes_to_ignore`` defaults to ``(_BatchNorm,)``, and when FSDP auto-wraps a model
it wraps each module that is an instance of one of them on its own, with mixed precision
off, and casts its input to float32 and its output back (``_override_module_mixed_precision``,
an ``isinstance`` test). The real thing runs here: FSDP on the CPU over a one-process gloo group.
"""

import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import assert_rel
from interop_cases import lib, rand  # noqa: F401

fsdp = pytest.importorskip("torch.distributed.fsdp")


@pytest.fixture
def one_process_group():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_mixed_precision_keeps_batch_norm_in_float32(lib, one_process_group):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), lib.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2),
                          lib.BatchNorm1d(2))  # fmt: skip
    bn = model[1]
    seen = {}  # layer index -> (dtype of its input, dtype of its weight) in the forward pass

    def record(i):
        def hook(m, args, out):
            seen.setdefault(i, (args[0].dtype, m.weight.dtype))

        return hook

    for i in (0, 1, 5):
        model[i].register_forward_hook(record(i))
    half = fsdp.MixedPrecision(param_dtype=torch.float16, reduce_dtype=torch.float16, buffer_dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NO_SHARD for one rank; BN's mixed precision overridden (what is tested)
        wrapped = fsdp.FullyShardedDataParallel(
            model, device_id=torch.device("cpu"), mixed_precision=half, use_orig_params=True,
            auto_wrap_policy=fsdp.wrap.ModuleWrapPolicy({nn.Linear}),
        )  # fmt: skip
    x = rand(4, 3, 6, 6)
    y = wrapped(x)
    y.sum().backward()
    assert seen[0] == (torch.float16, torch.float16)  # the conv computes in half precision ...
    assert seen[1] == (torch.float32, torch.float32)  # ... the batch norm in float32, input and parameters
    assert seen[5] == (torch.float32, torch.float32)
    assert bn.running_mean.dtype == torch.float32 and torch.isfinite(bn.running_var).all()
    assert_rel(bn.num_batches_tracked.float(), torch.tensor(1.0), 0, "num_batches_tracked")
