"""Shared by the Triton kernel tests (tests/kernels, tests/gpu): inputs, the float64
reference of batch norm + activation, tolerances per dtype, and the device.

Without a CUDA GPU the kernels run under the Triton interpreter on CPU tensors. That
must be switched on (TRITON_INTERPRET=1) before triton decorates the kernels, that is
before normlab.kernels.triton_bn is imported, so it is done here, at the import of this
module, which the test modules import first. With a GPU the same tests run on it.
"""

import os

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from normlab import kernels
from normlab import reference as R

# max |error| <= TOL * max |expected|; the reference is fed the same rounded inputs
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
PARAM = {"leaky_relu": 0.01, "elu": 1.0}


def make(shape, dtype, channels_last, device, seed=0, offset=2.0, scale=3.0):
    """x (offset + scale * N(0, 1)), weight, bias, dy; x and dy in ``dtype`` and the layout asked for."""
    gen = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = (offset + scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    weight = (0.5 + torch.rand(C, generator=gen, dtype=torch.float64)) * torch.where(torch.arange(C) % 2 == 0, 1, -1)
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    if channels_last:
        fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[len(shape)]
        x, dy = x.to(memory_format=fmt), dy.to(memory_format=fmt)
    return tuple(t.to(device) for t in (x, weight.to(pdtype), bias.to(pdtype), dy))


def reference(x, weight, bias, dy, activation="identity", residual=None, eps=1e-5):
    """(y, dx, dweight, dbias, dresidual, mean, var) in float64 from the (rounded) inputs."""
    as64 = (lambda t: None if t is None else t.detach().double().cpu().numpy())
    param = PARAM.get(activation, 0.0)
    y, cache, z = R.batch_norm_act_train(as64(x), as64(weight), as64(bias), eps, activation, param, as64(residual))
    dx, dw, db, dres = R.batch_norm_act_backward(as64(dy), cache, z, activation, param)
    return y, dx, dw, db, dres, np.ravel(cache.mean), np.ravel(cache.var)


def skip_unless_kernels_run():
    """Skip the calling test module when the Triton kernels cannot run here."""
    import pytest

    triton = pytest.importorskip("triton")
    version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    if not kernels._TRITON_USABLE:
        pytest.skip(f"normlab's kernels need triton >= {kernels.MIN_TRITON}, this is {triton.__version__}",
                    allow_module_level=True)
    if DEVICE == "cpu" and version < (3, 9) and tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4):
        # their interpreter turns 1-element arrays into ints, which numpy 2.4 refuses
        pytest.skip("the Triton interpreter before triton 3.9 needs numpy < 2.4", allow_module_level=True)
