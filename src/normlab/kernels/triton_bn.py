"""Triton kernels for batch norm with a fused activation: training forward, inference forward, backward.

Every kernel sees the input as a matrix of M rows (one per value a channel's statistics
are taken over: M = N * spatial) and C channel columns. An (N, C, S) tensor -- S the
spatial axes merged into one -- has element (row r, channel c) at
``(r // S) * stride_n + (r % S) * stride_s + c * stride_c``; in channels-last memory (and
for 2-D (N, C) inputs) rows are evenly spaced and that is just ``r * stride_r + c``.
A program works on tiles of BLOCK_R rows x BLOCK_C channels.

The math (``normlab.reference`` has it in float64; act is the fused activation, r the
optional residual added before it):

    forward    z = gamma * x_hat + beta (+ r),  y = act(z),  x_hat = (x - mean) * rstd
    backward   dz = dy * act'(z);  dbeta = sum(dz);  dgamma = sum(dz * x_hat);
               dx = gamma * rstd * (dz - (dbeta + x_hat * dgamma) / M)   (training)
               dx = gamma * rstd * dz                                     (inference)

Two ways to run a channel block, chosen by :func:`plan`:

* on chip: when a channel's M values fit in one tile, one program per channel block
  loads it once, takes the statistics, and writes y (backward: loads x and dy once,
  writes dx). Memory traffic is the minimum: read x, write y.
* split: otherwise each channel's rows are cut into chunks, one program per (chunk,
  channel block), so that a few channels with many values still fill the GPU. A first
  kernel writes each chunk's count-weighted partial statistics (forward: mean and sum
  of squared deviations, merged tile by tile with Chan's formula; backward: the two
  sums); a second kernel merges all chunks' partials (each program redundantly, which
  costs a few loads and saves a launch) and then does the element-wise pass.

Statistics are accumulated in float32 (float64 for float64 inputs) and are stable: as
in ``normlab.autograd``, each channel's first value is subtracted before anything is
summed (the shifted-data algorithm: exact for data of one magnitude, so a mean of 1e4
costs no precision); each tile's mean and squared deviations are then taken exactly,
and tiles and chunks are merged with Chan et al.'s formula, never with
``E[x^2] - E[x]^2``. Training returns the mean of the shifted data, which backward
uses. The running statistics are updated inside the kernel that finishes the statistics.

In-place activated batch norm (``FROM_OUTPUT``, Rota Bulo et al. 2018) saves only the
output y: backward inverts the activation (identity, leaky ReLU, ELU) to get z, then
``x_hat = (z - beta) / gamma``; callers pass ``gamma = |weight| + eps`` so that is defined.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = ["ACTIVATIONS", "INTERPRETED", "Plan", "plan", "forward", "backward"]

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "silu", "sigmoid")
INVERTIBLE = ("identity", "leaky_relu", "elu")


# --- device functions -------------------------------------------------------------------


@triton.jit
def _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY: tl.constexpr):
    """Offsets of the tile rows x cols; with EVENLY rows, stride_s is the row stride."""
    if EVENLY:
        return rows[:, None] * stride_s + cols[None, :] * stride_c
    return (rows // S * stride_n + rows % S * stride_s)[:, None] + cols[None, :] * stride_c


@triton.jit
def _activate(z, param, ACTIVATION: tl.constexpr):
    y = z
    if ACTIVATION == "relu":
        y = tl.where(z > 0, z, 0.0)
    elif ACTIVATION == "leaky_relu":
        y = tl.where(z > 0, z, z * param)
    elif ACTIVATION == "elu":
        y = tl.where(z > 0, z, param * (tl.exp(tl.minimum(z, 0.0)) - 1))
    elif ACTIVATION == "silu":
        y = z / (1 + tl.exp(-z))
    elif ACTIVATION == "sigmoid":
        y = 1 / (1 + tl.exp(-z))
    return y


@triton.jit
def _activation_grad(z, param, ACTIVATION: tl.constexpr):
    """d act / dz, with torch's choice at the kinks (relu' = 0, leaky' = slope, elu' = alpha at 0)."""
    d = tl.full(z.shape, 1.0, z.dtype)
    if ACTIVATION == "relu":
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACTIVATION == "leaky_relu":
        d = tl.where(z > 0, 1.0, param)
    elif ACTIVATION == "elu":
        d = tl.where(z > 0, 1.0, param * tl.exp(tl.minimum(z, 0.0)))
    elif ACTIVATION == "silu":
        s = 1 / (1 + tl.exp(-z))
        d = s * (1 + z * (1 - s))
    elif ACTIVATION == "sigmoid":
        s = 1 / (1 + tl.exp(-z))
        d = s * (1 - s)
    return d


@triton.jit
def _invert(y, param, ACTIVATION: tl.constexpr):
    """z = act^-1(y) for the invertible activations (identity, leaky ReLU, ELU)."""
    z = y
    if ACTIVATION == "leaky_relu":
        z = tl.where(y > 0, y, y / param)
    elif ACTIVATION == "elu":
        # y > -alpha in exact arithmetic; the clamp keeps a rounded y off log(0)
        z = tl.where(y > 0, y, tl.log(tl.maximum(1 + tl.minimum(y, 0.0) / param, 1e-30)))
    return z


@triton.jit
def _params(weight, bias, cols, cmask, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    w = tl.load(weight + cols, mask=cmask, other=1.0).to(ACC) if HAS_WEIGHT else tl.full(cols.shape, 1.0, ACC)
    b = tl.load(bias + cols, mask=cmask, other=0.0).to(ACC) if HAS_BIAS else tl.full(cols.shape, 0.0, ACC)
    return w, b


@triton.jit
def _shift(x, cols, cmask, stride_c, SHIFTED: tl.constexpr, ACC: tl.constexpr):
    """The shifted-data algorithm's shift: each channel's first value (row 0), or 0."""
    shift = tl.zeros(cols.shape, ACC)
    if SHIFTED:
        shift = tl.load(x + cols * stride_c, mask=cmask, other=0.0).to(ACC)
    return shift


@triton.jit
def _finish_statistics(shift, mean, var, M, eps, momentum, cols, smask, mean_out, rstd_out,
                       running_mean, running_var, new_running_mean, new_running_var, HAS_RUNNING: tl.constexpr):
    """rstd from the biased var; store mean (of x - shift), rstd; new running = running + momentum (batch - running)."""
    rstd = 1 / tl.sqrt(var + eps)
    tl.store(mean_out + cols, mean, mask=smask)
    tl.store(rstd_out + cols, rstd, mask=smask)
    if HAS_RUNNING:
        rm = tl.load(running_mean + cols, mask=smask, other=0.0).to(mean.dtype)
        rv = tl.load(running_var + cols, mask=smask, other=0.0).to(mean.dtype)
        unbiased = var * (M / tl.maximum(M - 1, 1))
        tl.store(new_running_mean + cols, rm + momentum * (shift + mean - rm), mask=smask)
        tl.store(new_running_var + cols, rv + momentum * (unbiased - rv), mask=smask)
    return rstd


@triton.jit
def _normalize_store(x_hat, w, b, y, residual, offs, mask, param,
                     HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr):
    z = x_hat * w[None, :] + b[None, :]
    if HAS_RESIDUAL:
        z += tl.load(residual + offs, mask=mask, other=0.0).to(z.dtype)
    tl.store(y + offs, _activate(z, param, ACTIVATION), mask=mask)


@triton.jit
def _recompute(saved, dy, residual, offs, mask, shift, mean, rstd, w, b, param,
               HAS_RESIDUAL: tl.constexpr, FROM_OUTPUT: tl.constexpr, ACTIVATION: tl.constexpr,
               ACC: tl.constexpr):
    """(x_hat, dz) of a tile, from the saved input x (and r) or, with FROM_OUTPUT, from y alone."""
    s = tl.load(saved + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(dy + offs, mask=mask, other=0.0).to(ACC)
    if FROM_OUTPUT:
        z = _invert(s, param, ACTIVATION)
        x_hat = (z - b[None, :]) / w[None, :]
    else:
        x_hat = (s - shift[None, :] - mean[None, :]) * rstd[None, :]
        z = x_hat * w[None, :] + b[None, :]
        if HAS_RESIDUAL:
            z += tl.load(residual + offs, mask=mask, other=0.0).to(ACC)
    dz = g if ACTIVATION == "identity" else g * _activation_grad(z, param, ACTIVATION)
    return tl.where(mask, x_hat, 0.0), tl.where(mask, dz, 0.0)


# --- kernels: forward -------------------------------------------------------------------


@triton.jit
def _forward_on_chip(x, y, residual, weight, bias, mean_out, rstd_out, running_mean, running_var,
                     new_running_mean, new_running_var, M, C, S, stride_n, stride_s, stride_c, eps, momentum, param,
                     HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     HAS_RUNNING: tl.constexpr, EVENLY: tl.constexpr, ACTIVATION: tl.constexpr,
                     ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Training forward of one channel block whose M rows fit one tile: x is read once."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_R)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    offs = _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY)
    shift = _shift(x, cols, cmask, stride_c, True, ACC)
    xv = tl.where(mask, tl.load(x + offs, mask=mask, other=0.0).to(ACC) - shift[None, :], 0.0)
    mean = tl.sum(xv, 0) / M
    x_c = tl.where(mask, xv - mean[None, :], 0.0)
    var = tl.sum(x_c * x_c, 0) / M
    rstd = _finish_statistics(shift, mean, var, M, eps, momentum, cols, cmask, mean_out, rstd_out,
                              running_mean, running_var, new_running_mean, new_running_var, HAS_RUNNING)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    _normalize_store(x_c * rstd[None, :], w, b, y, residual, offs, mask, param, HAS_RESIDUAL, ACTIVATION)


@triton.jit
def _forward_partial_statistics(x, mean_part, m2_part, M, C, S, stride_n, stride_s, stride_c, CHUNK,
                                EVENLY: tl.constexpr, ACC: tl.constexpr,
                                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Mean of x - shift and sum of squared deviations over one chunk of rows, merged tile by tile (Chan)."""
    chunk = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    lo = chunk * CHUNK
    hi = tl.minimum(lo + CHUNK, M)
    shift = _shift(x, cols, cmask, stride_c, True, ACC)
    mean = tl.zeros([BLOCK_C], ACC)
    m2 = tl.zeros([BLOCK_C], ACC)
    for start in range(lo, hi, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows < hi)[:, None] & cmask[None, :]
        xv = tl.load(x + _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY), mask=mask, other=0.0)
        xv = tl.where(mask, xv.to(ACC) - shift[None, :], 0.0)
        n_seen = (start - lo).to(ACC)
        n_tile = (tl.minimum(start + BLOCK_R, hi) - start).to(ACC)
        tile_mean = tl.sum(xv, 0) / n_tile
        dev = tl.where(mask, xv - tile_mean[None, :], 0.0)
        delta = tile_mean - mean
        n_total = n_seen + n_tile
        mean += delta * (n_tile / n_total)
        m2 += tl.sum(dev * dev, 0) + delta * delta * (n_seen * n_tile / n_total)
    tl.store(mean_part + chunk * C + cols, mean, mask=cmask)
    tl.store(m2_part + chunk * C + cols, m2, mask=cmask)


@triton.jit
def _forward_apply(x, y, residual, weight, bias, mean_out, rstd_out, running_mean, running_var,
                   new_running_mean, new_running_var, mean_part, m2_part,
                   M, C, S, stride_n, stride_s, stride_c, CHUNK, N_CHUNKS,
                   eps, momentum, param,
                   TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr, HAS_RUNNING: tl.constexpr, EVENLY: tl.constexpr,
                   ACTIVATION: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CHUNKS_P2: tl.constexpr):
    """The element-wise pass over one chunk, after finishing the statistics of its channels.

    Training: merge every chunk's partials, mean = sum(n_k mean_k) / M and
    M2 = sum(M2_k) + sum(n_k (mean_k - mean)^2) (Chan's formula for k groups).
    Inference: the running statistics.
    """
    chunk = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    smask = cmask & (cols * 0 + chunk == 0)  # one program per channel block stores the statistics
    if TRAINING:
        k = tl.arange(0, CHUNKS_P2)
        kmask = (k < N_CHUNKS)[:, None] & cmask[None, :]
        n_k = tl.minimum(tl.maximum(M - k * CHUNK, 0), CHUNK).to(ACC)[:, None]
        mean_k = tl.load(mean_part + k[:, None] * C + cols[None, :], mask=kmask, other=0.0)
        mean = tl.sum(n_k * mean_k, 0) / M
        dev = tl.where(kmask, mean_k - mean[None, :], 0.0)
        m2 = tl.sum(tl.load(m2_part + k[:, None] * C + cols[None, :], mask=kmask, other=0.0), 0)
        var = (m2 + tl.sum(n_k * dev * dev, 0)) / M
        shift = _shift(x, cols, cmask, stride_c, True, ACC)
        rstd = _finish_statistics(shift, mean, var, M, eps, momentum, cols, smask, mean_out, rstd_out,
                                  running_mean, running_var, new_running_mean, new_running_var, HAS_RUNNING)
    else:
        mean = tl.load(running_mean + cols, mask=cmask, other=0.0).to(ACC)
        var = tl.load(running_var + cols, mask=cmask, other=1.0).to(ACC)
        shift = tl.zeros([BLOCK_C], ACC)
        rstd = _finish_statistics(shift, mean, var, M, eps, momentum, cols, smask, mean_out, rstd_out,
                                  running_mean, running_var, running_mean, running_var, False)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    lo = chunk * CHUNK
    hi = tl.minimum(lo + CHUNK, M)
    for start in range(lo, hi, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows < hi)[:, None] & cmask[None, :]
        offs = _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY)
        xv = tl.load(x + offs, mask=mask, other=0.0).to(ACC)
        x_hat = (xv - shift[None, :] - mean[None, :]) * rstd[None, :]
        _normalize_store(x_hat, w, b, y, residual, offs, mask, param, HAS_RESIDUAL, ACTIVATION)


# --- kernels: backward ------------------------------------------------------------------


@triton.jit
def _backward_on_chip(dy, saved, residual, weight, bias, mean, rstd, dx, dres, dweight, dbias,
                      M, C, S, stride_n, stride_s, stride_c, param,
                      TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, RESIDUAL_GRAD: tl.constexpr,
                      FROM_OUTPUT: tl.constexpr, SHIFTED: tl.constexpr, EVENLY: tl.constexpr,
                      ACTIVATION: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Backward of one channel block whose M rows fit one tile: the saved tensor and dy are read once."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_R)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    offs = _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY)
    shift = _shift(saved, cols, cmask, stride_c, SHIFTED, ACC)
    mu = tl.load(mean + cols, mask=cmask, other=0.0)
    r = tl.load(rstd + cols, mask=cmask, other=1.0)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    x_hat, dz = _recompute(saved, dy, residual, offs, mask, shift, mu, r, w, b, param,
                           HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
    sum_dz = tl.sum(dz, 0)
    sum_dz_xhat = tl.sum(dz * x_hat, 0)
    tl.store(dweight + cols, sum_dz_xhat, mask=cmask)
    tl.store(dbias + cols, sum_dz, mask=cmask)
    g = dz
    if TRAINING:
        g = dz - (sum_dz[None, :] + x_hat * sum_dz_xhat[None, :]) / M
    tl.store(dx + offs, g * (w * r)[None, :], mask=mask)
    if RESIDUAL_GRAD:
        tl.store(dres + offs, dz, mask=mask)


@triton.jit
def _backward_partial_sums(dy, saved, residual, weight, bias, mean, rstd, dz_part, dzx_part,
                           M, C, S, stride_n, stride_s, stride_c, CHUNK, param,
                           HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                           FROM_OUTPUT: tl.constexpr, SHIFTED: tl.constexpr, EVENLY: tl.constexpr,
                           ACTIVATION: tl.constexpr,
                           ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum(dz) and sum(dz * x_hat) over one chunk of rows."""
    chunk = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    shift = _shift(saved, cols, cmask, stride_c, SHIFTED, ACC)
    mu = tl.load(mean + cols, mask=cmask, other=0.0)
    r = tl.load(rstd + cols, mask=cmask, other=1.0)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    sum_dz = tl.zeros([BLOCK_C], ACC)
    sum_dz_xhat = tl.zeros([BLOCK_C], ACC)
    lo = chunk * CHUNK
    hi = tl.minimum(lo + CHUNK, M)
    for start in range(lo, hi, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows < hi)[:, None] & cmask[None, :]
        offs = _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY)
        x_hat, dz = _recompute(saved, dy, residual, offs, mask, shift, mu, r, w, b, param,
                               HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
        sum_dz += tl.sum(dz, 0)
        sum_dz_xhat += tl.sum(dz * x_hat, 0)
    tl.store(dz_part + chunk * C + cols, sum_dz, mask=cmask)
    tl.store(dzx_part + chunk * C + cols, sum_dz_xhat, mask=cmask)


@triton.jit
def _backward_apply(dy, saved, residual, weight, bias, mean, rstd, dx, dres, dweight, dbias,
                    dz_part, dzx_part, M, C, S, stride_n, stride_s, stride_c, CHUNK, N_CHUNKS, param,
                    TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                    HAS_RESIDUAL: tl.constexpr, RESIDUAL_GRAD: tl.constexpr,
                    FROM_OUTPUT: tl.constexpr, SHIFTED: tl.constexpr, EVENLY: tl.constexpr,
                    ACTIVATION: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                    CHUNKS_P2: tl.constexpr):
    """dx (and dz for the residual) over one chunk, after summing every chunk's partial sums."""
    chunk = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    k = tl.arange(0, CHUNKS_P2)
    kmask = (k < N_CHUNKS)[:, None] & cmask[None, :]
    part = k[:, None] * C + cols[None, :]
    sum_dz = tl.sum(tl.load(dz_part + part, mask=kmask, other=0.0), 0)
    sum_dz_xhat = tl.sum(tl.load(dzx_part + part, mask=kmask, other=0.0), 0)
    smask = cmask & (cols * 0 + chunk == 0)
    tl.store(dweight + cols, sum_dz_xhat, mask=smask)
    tl.store(dbias + cols, sum_dz, mask=smask)
    shift = _shift(saved, cols, cmask, stride_c, SHIFTED, ACC)
    mu = tl.load(mean + cols, mask=cmask, other=0.0)
    r = tl.load(rstd + cols, mask=cmask, other=1.0)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    gain = w * r
    lo = chunk * CHUNK
    hi = tl.minimum(lo + CHUNK, M)
    for start in range(lo, hi, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows < hi)[:, None] & cmask[None, :]
        offs = _offsets(rows, cols, S, stride_n, stride_s, stride_c, EVENLY)
        x_hat, dz = _recompute(saved, dy, residual, offs, mask, shift, mu, r, w, b, param,
                               HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
        g = dz
        if TRAINING:
            g = dz - (sum_dz[None, :] + x_hat * sum_dz_xhat[None, :]) / M
        tl.store(dx + offs, g * gain[None, :], mask=mask)
        if RESIDUAL_GRAD:
            tl.store(dres + offs, dz, mask=mask)


# --- launch -----------------------------------------------------------------------------

INTERPRETED = not isinstance(_forward_on_chip, triton.runtime.JITFunction)  # TRITON_INTERPRET=1

TILE = 4096  # elements per tile on the split path (fp32: 32 registers a thread at 4 warps)
ON_CHIP = 8192  # largest tile that holds a whole channel block (backward keeps x and dy in it)
MAX_CHUNKS = 128  # partials per channel block that the apply kernels merge in one load


class Plan(NamedTuple):
    """How a launch tiles the (M rows, C channels) matrix.

    ``block_r`` x ``block_c`` is the tile; ``chunk`` the rows one program covers (a
    multiple of block_r). ``block_r >= M`` means the on-chip path.
    """

    block_r: int
    block_c: int
    chunk: int
    num_warps: int = 4


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def programs_wanted(device: torch.device) -> int:
    """About four programs per multiprocessor (the interpreter: a few)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def plan(M: int, C: int, channels_contiguous: bool, programs: int) -> Plan:
    """Tile shape and chunking for an (M, C) problem.

    Channels-last memory puts a channel block side by side, so tiles take up to 32
    channels (coalesced loads along C); channels-first memory has each channel's rows
    contiguous, so tiles take one channel and many rows. A channel block goes on chip
    when its M rows fit :data:`ON_CHIP` elements; otherwise its rows are split into
    chunks, enough of them that the grid has about ``programs`` programs.
    """
    block_c = min(_pow2(C), 32) if channels_contiguous else 1
    if _pow2(M) * block_c <= ON_CHIP:
        block_r = _pow2(M)
        return Plan(block_r, block_c, block_r, 8 if block_r * block_c > TILE else 4)
    block_r = TILE // block_c
    tiles = -(-M // block_r)
    channel_blocks = -(-C // block_c)
    chunks = min(tiles, MAX_CHUNKS, max(1, -(-programs // channel_blocks)))
    return Plan(block_r, block_c, -(-tiles // chunks) * block_r)


def _rows_view(t: torch.Tensor):
    """(S, stride_n, stride_s, evenly) of t viewed as (N, C, S), or None if its spatial axes do not merge."""
    dims = [(n, s) for n, s in zip(t.shape[2:], t.stride()[2:]) if n != 1]
    for (_, outer), (n, inner) in zip(dims, dims[1:]):
        if outer != inner * n:
            return None
    S = math.prod(t.shape[2:])
    stride_s = dims[-1][1] if dims else 1
    stride_n = t.stride(0)
    if S == 1:
        return S, stride_n, stride_n, True
    evenly = t.shape[0] == 1 or stride_n == S * stride_s
    return S, stride_n, stride_s, evenly


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _in_layout(t, ref):
    """t with ref's strides (a copy only if they differ)."""
    if t is None or t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def _work(out: torch.Tensor):
    """A tensor the kernels can write for ``out``: itself, or a contiguous stand-in."""
    return out if _rows_view(out) is not None else torch.empty_like(out, memory_format=torch.contiguous_format)


def _check(x: torch.Tensor, activation: str):
    if activation not in ACTIVATIONS:
        raise ValueError(f"triton batch norm: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if not 2 <= x.dim() <= 5:
        raise ValueError(f"triton batch norm: expected a 2-D to 5-D input, got shape {tuple(x.shape)}")
    if x.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "triton batch norm: CPU tensors run only under the Triton interpreter (set "
            "TRITON_INTERPRET=1 before triton is imported); on a GPU pass CUDA tensors"
        )


def forward(x, weight, bias, residual, running_mean, running_var, training: bool, momentum: float,
            eps: float, activation: str = "identity", param: float = 0.0, new_running=None,
            plan_: Plan | None = None):
    """``y = act(batch_norm(x) + residual)``; returns ``(y, mean, rstd)`` (float32, float64 for float64 x).

    Training uses the batch statistics and, when running_mean/var are given, writes
    their update into ``new_running`` (a pair of tensors like them; by default they
    themselves, in place); ``mean`` is then the mean of ``x - x[first row]`` (the
    shifted-data algorithm; :func:`backward` takes it as it is). Inference uses the
    running statistics, and mean and rstd returned are theirs.
    """
    _check(x, activation)
    y = torch.empty_like(x)
    work = _work(y)
    has_running = running_mean is not None and running_var is not None
    if not training and not has_running:
        raise ValueError("triton batch norm: inference needs running_mean and running_var")
    x, residual = _in_layout(x, work), _in_layout(residual, work)
    S, stride_n, stride_s, evenly = _rows_view(work)
    N, C = x.shape[:2]
    M = N * S
    ACC, acc = _acc(x.dtype)
    mean = torch.empty(C, device=x.device, dtype=acc)
    rstd = torch.empty_like(mean)
    p = plan_ or plan(M, C, x.stride(1) == 1, programs_wanted(x.device))
    dummy = mean  # stands in for absent optional pointers; never read
    common = dict(
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        EVENLY=evenly, ACTIVATION=activation, ACC=ACC, BLOCK_R=p.block_r, BLOCK_C=p.block_c,
        num_warps=p.num_warps,
    )
    ptrs = (x, work, dummy if residual is None else residual, dummy if weight is None else weight,
            dummy if bias is None else bias, mean, rstd)
    running = (dummy,) * 4
    if has_running:
        running = (running_mean, running_var, *(new_running or (running_mean, running_var)))
    geometry = (M, C, S, stride_n, stride_s, x.stride(1))
    channel_blocks = triton.cdiv(C, p.block_c)
    if training and p.block_r >= M:
        _forward_on_chip[(channel_blocks,)](
            *ptrs, *running, *geometry, eps, momentum, param,
            HAS_RUNNING=has_running, **common,
        )
    else:
        chunks = triton.cdiv(M, p.chunk)
        mean_part = m2_part = dummy
        if training:
            mean_part = torch.empty((chunks, C), device=x.device, dtype=acc)
            m2_part = torch.empty_like(mean_part)
            _forward_partial_statistics[(chunks, channel_blocks)](
                x, mean_part, m2_part, *geometry, p.chunk,
                EVENLY=evenly, ACC=ACC, BLOCK_R=p.block_r, BLOCK_C=p.block_c, num_warps=p.num_warps,
            )
        _forward_apply[(chunks, channel_blocks)](
            *ptrs, *running, mean_part, m2_part, *geometry,
            p.chunk, chunks, eps, momentum, param, TRAINING=training, HAS_RUNNING=has_running,
            CHUNKS_P2=_pow2(chunks), **common,
        )
    if work is not y:
        y.copy_(work)
    return y, mean, rstd


def backward(dy, saved, weight, bias, residual, mean, rstd, training: bool, activation: str = "identity",
             param: float = 0.0, from_output: bool = False, residual_grad: bool = False,
             plan_: Plan | None = None):
    """Gradients ``(dx, dweight, dbias, dresidual)`` of :func:`forward`.

    ``saved`` is the input x, or with ``from_output`` the output y (in-place activated
    batch norm: invertible activation, no residual, ``weight`` the |weight| + eps used
    forward). ``residual`` is needed only to recompute z when it was added before a
    non-identity activation. dweight and dbias come in the weight's dtype (float32 when
    there is no weight); dresidual is ``dz``, or an empty tensor unless ``residual_grad``.
    """
    _check(saved, activation)
    if from_output and (activation not in INVERTIBLE or residual is not None):
        raise ValueError(
            "triton batch norm: recomputing from the output needs an invertible activation and no residual"
        )
    dx = torch.empty_like(saved)
    work = _work(dx)
    saved, dy, residual = (_in_layout(t, work) for t in (saved, dy, residual))
    S, stride_n, stride_s, evenly = _rows_view(work)
    N, C = saved.shape[:2]
    M = N * S
    ACC, acc = _acc(saved.dtype)
    pdtype = weight.dtype if weight is not None else acc
    dweight = torch.empty(C, device=saved.device, dtype=pdtype)
    dbias = torch.empty(C, device=saved.device, dtype=bias.dtype if bias is not None else pdtype)
    dres = torch.empty_like(dx) if residual_grad else dx.new_empty(0)
    dres_work = dres if work is dx or not residual_grad else torch.empty_like(work)
    p = plan_ or plan(M, C, saved.stride(1) == 1, programs_wanted(saved.device))
    dummy = mean
    ptrs = (dy, saved, dummy if residual is None else residual, dummy if weight is None else weight,
            dummy if bias is None else bias, mean, rstd)
    common = dict(
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        FROM_OUTPUT=from_output, SHIFTED=training and not from_output, EVENLY=evenly,
        ACTIVATION=activation, ACC=ACC, BLOCK_R=p.block_r, BLOCK_C=p.block_c, num_warps=p.num_warps,
    )
    geometry = (M, C, S, stride_n, stride_s, saved.stride(1))
    channel_blocks = triton.cdiv(C, p.block_c)
    dres_ptr = dres_work if residual_grad else dummy
    if p.block_r >= M:
        _backward_on_chip[(channel_blocks,)](
            *ptrs, work, dres_ptr, dweight, dbias, *geometry, param,
            TRAINING=training, RESIDUAL_GRAD=residual_grad, **common,
        )
    else:
        chunks = triton.cdiv(M, p.chunk)
        dz_part = torch.empty((chunks, C), device=saved.device, dtype=acc)
        dzx_part = torch.empty_like(dz_part)
        _backward_partial_sums[(chunks, channel_blocks)](
            *ptrs, dz_part, dzx_part, *geometry, p.chunk, param, **common,
        )
        _backward_apply[(chunks, channel_blocks)](
            *ptrs, work, dres_ptr, dweight, dbias, dz_part, dzx_part, *geometry, p.chunk, chunks, param,
            TRAINING=training, RESIDUAL_GRAD=residual_grad, CHUNKS_P2=_pow2(chunks), **common,
        )
    if work is not dx:
        dx.copy_(work)
        if residual_grad:
            dres.copy_(dres_work)
    return dx, dweight, dbias, dres
