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


def as64(t):
    """A tensor (or array) as a float64 NumPy array; None stays None."""
    return t if t is None or isinstance(t, np.ndarray) else t.detach().double().cpu().numpy()


def reference(x, weight, bias, dy, activation="identity", residual=None, eps=1e-5):
    """(y, dx, dweight, dbias, dresidual, mean, var) in float64 from the (rounded) inputs."""
    param = PARAM.get(activation, 0.0)
    y, cache, z = R.batch_norm_act_train(as64(x), as64(weight), as64(bias), eps, activation, param, as64(residual))
    dx, dw, db, dres = R.batch_norm_act_backward(as64(dy), cache, z, activation, param)
    return y, dx, dw, db, dres, np.ravel(cache.mean), np.ravel(cache.var)


def split(x):
    """A split plan of small tiles for x: two chunks of rows, each of full tiles then a ragged one.

    Channels-last: blocks of 2 channels (the last one masked when C is odd), tiles of 16
    rows. Channels-first: tiles of 2 rows of half a row's width (ragged when the width is
    not a power of two). Few programs: the interpreter runs them one after the other.
    """
    from normlab.kernels import triton_bn

    channels_last, A, B, *_ = triton_bn.geometry(x.shape, x.stride())
    elt = x.element_size()
    if channels_last:
        return dict(on_chip=False, block_b=2, config=(32 * elt, 1, 1), chunk_a=max(3, A // 32 * 16 + 5))
    block_b = max(1, triton_bn._pow2(B) // 2)
    return dict(on_chip=False, block_b=block_b, config=(2 * block_b * elt, 1, 1), chunk_a=max(3, A // 2 | 1))


# act' jumps at z = 0 from 1 to this (ReLU, leaky ReLU); a kernel's z within rounding of 0 may fall either side
KINKS = {"relu": 0.0, "leaky_relu": PARAM["leaky_relu"]}
KINK_BAND = 3e-5  # |z| below this times the size of z's terms counts as "within rounding of 0"


def assert_gradients(out, x, weight, bias, dy, activation="identity", residual=None, tol=None, ptol=None, what=""):
    """out["dx"], out["dw"], out["db"] (and out["dres"]) against the float64 reference.

    At an activation's kink the comparison allows for a sign flip: where the reference's
    z lies within rounding of 0, a kernel that computes z in float32 may take the other
    side, so its act' differs by (1 - slope). Those elements are left out of the dx and
    dresidual comparisons, and what their flips can change in the sums (and through the
    sums, in every dx) is added to the tolerances. Elsewhere (and for smooth activations)
    this is the plain comparison.
    """
    from conftest import assert_rel

    tol = tol or TOL[x.dtype]
    ptol = ptol or max(TOL[out["dw"].dtype], 1e-5)
    param = PARAM.get(activation, 0.0)
    y, cache, z = R.batch_norm_act_train(as64(x), as64(weight), as64(bias), 1e-5, activation, param, as64(residual))
    dx, dw, db, dres = R.batch_norm_act_backward(as64(dy), cache, z, activation, param)
    axes = (0, *range(2, x.dim()))
    size = np.abs(cache.x_hat * (1.0 if weight is None else cache.weight)) + np.abs(z - cache.x_hat * (
        1.0 if weight is None else cache.weight))
    band = (np.abs(z) <= KINK_BAND * size) if activation in KINKS else np.zeros(z.shape, bool)
    flip = np.where(band, np.abs(as64(dy)) * (1 - KINKS.get(activation, 1.0)), 0.0)
    allow_db = flip.sum(axis=axes)
    allow_dw = (flip * np.abs(cache.x_hat)).sum(axis=axes)
    gain = np.abs(cache.inv_std * (1.0 if weight is None else cache.weight))
    per_channel = cache.inv_std.shape
    allow_dx = gain * (allow_db.reshape(per_channel) + np.abs(cache.x_hat) * allow_dw.reshape(per_channel))
    allow_dx /= cache.count
    keep = ~band

    def close(got, expected, rel, allowance, name):
        got = as64(got)
        err = np.abs(got - expected)
        scale = max(np.abs(expected).max(), 1e-12)
        worst = (err - allowance).max()
        assert worst <= rel * scale, f"{what} {name}: error past the kink allowance {worst:.3g} > {rel:g} x {scale:.3g}"

    close(np.where(keep, as64(out["dx"]), dx), dx, tol, allow_dx, "dx")
    close(out["dw"], dw, ptol, allow_dw, "dweight")
    close(out["db"], db, ptol, allow_db, "dbias")
    if residual is not None:
        close(np.where(keep, as64(out["dres"]), dres), dres, tol, 0.0, "dresidual")
    assert_rel(out["y"].cpu(), y, tol, f"{what} y")  # y is continuous at the kink
    return int(band.sum())


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
