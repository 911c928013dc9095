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
from interop_cases import BOTH, rand

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


HALF = dict(param_dtype=torch.float16, reduce_dtype=torch.float16, buffer_dtype=torch.float16)


def model_and_dtypes(lib):
    """A model, and what its layers 0, 1 and 5 will record: (input dtype, weight dtype) in forward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), lib.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2),
                          lib.BatchNorm1d(2))  # fmt: skip
    seen = {}

    def record(i):
        def hook(m, args, out):
            seen.setdefault(i, (args[0].dtype, m.weight.dtype))

        return hook

    for i in (0, 1, 5):
        model[i].register_forward_hook(record(i))
    return model, seen


def wrap(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NO_SHARD for one rank; BN's mixed precision overridden (what is tested)
        return fsdp.FullyShardedDataParallel(
            model, device_id=torch.device("cpu"), mixed_precision=fsdp.MixedPrecision(**HALF), use_orig_params=True,
            **kwargs,
        )  # fmt: skip


@BOTH
def test_fsdp_mixed_precision_keeps_batch_norm_in_float32(lib, one_process_group):
    model, seen = model_and_dtypes(lib)
    bn = model[1]
    wrapped = wrap(model, auto_wrap_policy=fsdp.wrap.ModuleWrapPolicy({nn.Linear}))
    y = wrapped(rand(4, 3, 6, 6))
    y.sum().backward()
    assert seen[0] == (torch.float16, torch.float16)  # the conv computes in half precision ...
    assert seen[1] == (torch.float32, torch.float32)  # ... the batch norm in float32, input and parameters
    assert seen[5] == (torch.float32, torch.float32)
    assert bn.running_mean.dtype == torch.float32 and torch.isfinite(bn.running_var).all()
    assert_rel(bn.num_batches_tracked.float(), torch.tensor(1.0), 0, "num_batches_tracked")


@BOTH
def test_fsdp_without_auto_wrapping_casts_batch_norm_too(lib, one_process_group):
    """The exclusion is applied when FSDP wraps modules itself: wrapping the whole model by hand
    casts every layer, torch's batch norms as normlab's."""
    model, seen = model_and_dtypes(lib)
    wrap(model)(rand(4, 3, 6, 6))
    assert seen[1] == (torch.float16, torch.float16)
