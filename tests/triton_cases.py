"""Shared by the Triton kernel tests (tests/kernels, tests/gpu): inputs, the float64
reference of batch norm + activation, tolerances per dtype, and the device.

Without a CUDA GPU the kernels run under the Triton interpreter on CPU tensors
(TRITON_INTERPRET=1, switched on by tests/conftest.py before triton is first imported).
With a GPU the same tests run on it.
"""


import numpy as np
import torch

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


def expected(x, weight, bias, dy, activation="identity", residual=None, eps=1e-5, on_device=False):
    """The float64 reference as torch tensors: y, z, x_hat, inv_std, dx, dw, db, dres (per channel: 1-D).

    From normlab.reference (NumPy), or with ``on_device``, from the same formulas in
    float64 torch on x's device with torch's autograd (for GPU-sized tensors).
    """
    param = PARAM.get(activation, 0.0)
    if not on_device:
        y, cache, z = R.batch_norm_act_train(as64(x), as64(weight), as64(bias), eps, activation, param,
                                             as64(residual))
        dx, dw, db, dres = R.batch_norm_act_backward(as64(dy), cache, z, activation, param)
        t = {"y": y, "z": z, "x_hat": cache.x_hat, "inv_std": np.ravel(cache.inv_std), "dx": dx, "dres": dres,
             "dw": dw if dw is not None else (as64(dy) * 0).sum(axis=(0, *range(2, x.dim()))), "db": db}
        return {k: None if v is None else torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in t.items()}
    dims = [0, *range(2, x.dim())]
    per_channel = [1, -1] + [1] * (x.dim() - 2)
    x64 = x.detach().double().requires_grad_()
    w64 = (torch.ones(x.shape[1], device=x.device) if weight is None else weight).detach().double().requires_grad_()
    b64 = (torch.zeros(x.shape[1], device=x.device) if bias is None else bias).detach().double().requires_grad_()
    r64 = None if residual is None else residual.detach().double().requires_grad_()
    mean = x64.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(((x64 - mean) ** 2).mean(dims, keepdim=True) + eps)
    x_hat = (x64 - mean) * inv_std
    z = x_hat * w64.view(per_channel) + b64.view(per_channel) + (0 if r64 is None else r64)
    F = torch.nn.functional
    y = {"identity": lambda z: z, "relu": F.relu, "leaky_relu": lambda z: F.leaky_relu(z, param),
         "elu": lambda z: F.elu(z, param), "silu": F.silu, "sigmoid": torch.sigmoid}[activation](z)
    leaves = [x64, w64, b64] + ([r64] if r64 is not None else [])
    dx, dw, db, *dres = torch.autograd.grad(y, leaves, dy.double())
    return {"y": y.detach(), "z": z.detach(), "x_hat": x_hat.detach(), "inv_std": inv_std.detach().flatten(),
            "dx": dx, "dw": dw, "db": db, "dres": dres[0] if dres else None}


def assert_gradients(out, x, weight, bias, dy, activation="identity", residual=None, tol=None, ptol=None, what="",
                     on_device=False):
    """out["y"], out["dx"], out["dw"], out["db"] (and out["dres"]) against the float64 :func:`expected`.

    At an activation's kink the comparison allows for a sign flip: where the reference's
    z lies within rounding of 0, a kernel that computes z in float32 may take the other
    side, so its act' differs by (1 - slope). Those elements are left out of the dx and
    dresidual comparisons, and what their flips can change in the sums (and through the
    sums, in every dx) is added to the tolerances. Elsewhere (and for smooth activations)
    this is the plain comparison. Returns the number of elements within rounding of the kink.
    """
    tol = tol or TOL[x.dtype]
    ptol = ptol or max(TOL[out["dw"].dtype], 1e-5)
    e = expected(x, weight, bias, dy, activation, residual, on_device=on_device)
    device = e["y"].device
    dims = [0, *range(2, x.dim())]
    per_channel = [1, -1] + [1] * (x.dim() - 2)
    w = 1.0 if weight is None else weight.detach().double().to(device).view(per_channel)
    size = (e["x_hat"] * w).abs() + (e["z"] - e["x_hat"] * w).abs()
    band = (e["z"].abs() <= KINK_BAND * size) if activation in KINKS else torch.zeros_like(e["z"], dtype=torch.bool)
    flip = torch.where(band, dy.detach().double().to(device).abs() * (1 - KINKS.get(activation, 1.0)), 0.0)
    allow_db = flip.sum(dims)
    allow_dw = (flip * e["x_hat"].abs()).sum(dims)
    gain = (e["inv_std"].view(per_channel) * w).abs()
    allow_dx = gain * (allow_db.view(per_channel) + e["x_hat"].abs() * allow_dw.view(per_channel)) * (
        x.shape[1] / x.numel())

    def close(got, want, rel, allowance, name, keep=None):
        got = got.detach().double().to(device)
        err = (got - want).abs() - allowance
        if keep is not None:
            err = torch.where(keep, err, 0.0)
        worst, scale = err.max().item(), max(want.abs().max().item(), 1e-12)
        assert worst <= rel * scale, f"{what} {name}: error past the kink allowance {worst:.3g} > {rel:g} x {scale:.3g}"

    close(out["y"], e["y"], tol, 0.0, "y")  # y is continuous at the kink
    close(out["dx"], e["dx"], tol, allow_dx, "dx", ~band)
    close(out["dw"], e["dw"], ptol, allow_dw, "dweight")
    close(out["db"], e["db"], ptol, allow_db, "dbias")
    if residual is not None:
        close(out["dres"], e["dres"], tol, 0.0, "dresidual", ~band)
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
