"""Triton kernels for batch norm with a fused activation: training forward, inference forward, backward.

The math (``normlab.reference`` has it in float64; act is the fused activation, r the
optional residual added before it):

    forward    z = gamma * x_hat + beta (+ r),  y = act(z),  x_hat = (x - mean) * rstd
    backward   dz = dy * act'(z);  dbeta = sum(dz);  dgamma = sum(dz * x_hat);
               dx = gamma * rstd * (dz - (dbeta + x_hat * dgamma) / M)   (training)
               dx = gamma * rstd * dz                                     (inference)

**Geometry.** Per channel, every kernel sees the input as a matrix of A rows whose
columns are contiguous in memory, and walks it in tiles of BLOCK_A rows x BLOCK_B
columns with pointer arithmetic only (no index is divided per element):

* channels-first (NCHW, (N, C, L)): a channel is N rows of S = H*W contiguous values,
  A = N, B = S; element (a, b) of channel c is at ``c * stride_c + a * stride_a + b``.
  A program takes one channel; a wide S is cut into column tiles.
* channels-last (NHWC, (N, C)): a position's C channels are contiguous, A = N*S rows,
  B = C; a program takes BLOCK_B neighbouring channels (a 128-byte row segment), so
  loads are coalesced along C.

:func:`plan` picks the tiles (sized in bytes), proves to the compiler the alignment
the strides have (so that loads are vectorized where they can be), and switches to
64-bit offsets for tensors of 2^31 elements or more.

**Two paths.**

* on chip: when a channel block's values fit one tile, one program loads it once,
  takes the statistics in registers (two exact passes) and writes y; backward loads x
  and dy once and writes dx. Memory traffic is the minimum: read x, write y.
* split: otherwise each channel block's rows (and, for few rows, its columns) are cut
  into chunks, about two waves of programs in all. A statistics kernel accumulates each
  chunk in per-thread Welford states (one division per tile, not per element: every
  slot of a full tile has seen the same count), merges them once per program with
  Chan et al.'s formula and writes the chunk's partials; the last program of a channel
  block to finish (an atomic counter) merges the partials of all chunks, in chunk
  order, into the mean and rstd, and updates the running statistics in place. An
  apply kernel then does the element-wise pass. Backward is the same with two sums.

Loops over full tiles carry no row mask and are software-pipelined
(``tl.range(..., num_stages=...)``); the partial tile at the end of a chunk is done
after the loop, masked. Tile size, warps and pipeline depth are autotuned on CUDA,
keyed on what changes the best choice (layout, tile width, alignment, dtype).

Statistics are accumulated in float32 (float64 for float64 inputs) and are stable:
each channel's first value is subtracted before anything is accumulated (the
shifted-data algorithm that ``normlab.autograd`` uses: a mean of 1e4 costs no
precision), and counts are merged with Welford's and Chan's formulas, never with
``E[x^2] - E[x]^2``. Training returns the mean of the shifted data, which backward uses.

In-place activated batch norm (``FROM_OUTPUT``, Rota Bulo et al. 2018) saves only the
output y: backward inverts the activation (identity, leaky ReLU, ELU) to get z, then
``x_hat = (z - beta) / gamma``; callers pass ``gamma = |weight| + eps`` so that is defined.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = ["ACTIVATIONS", "INTERPRETED", "Plan", "plan", "forward", "backward"]

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "silu", "sigmoid")
INVERTIBLE = ("identity", "leaky_relu", "elu")


# --- device functions: the math -------------------------------------------------------


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
def _chan(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Chan et al.'s merge of two groups' (mean, sum of squared deviations, count)."""
    n = n_a + n_b
    w = tl.where(n > 0, n_b / tl.maximum(n, 1.0), 0.0)
    delta = mean_b - mean_a
    return mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w, n


# --- device functions: where a program works -------------------------------------------


@triton.jit
def _chunk(N_CHUNKS, B_CHUNKS, CHUNK_A, A, B_T: tl.constexpr, BLOCK_B: tl.constexpr):
    """(chunk, channel block, first row, end row, first column) of this program (a 1-D grid)."""
    pid = tl.program_id(0)
    chunk = pid % N_CHUNKS
    a_lo = (chunk // B_CHUNKS) * CHUNK_A
    return chunk, pid // N_CHUNKS, a_lo, tl.minimum(a_lo + CHUNK_A, A), (chunk % B_CHUNKS) * (B_T * BLOCK_B)


@triton.jit
def _channels(block, C, B, stride_c, CHANNELS_LAST: tl.constexpr, CPB: tl.constexpr, ALIGN: tl.constexpr,
              IDX: tl.constexpr):
    """The block's channels, their mask, the offset of its first channel, and its columns' bound.

    The bound is rounded to ALIGN, which :func:`plan` made divide it, so that the
    compiler sees the column mask constant over ALIGN-wide vectors.
    """
    c0 = block * CPB
    cols = c0 + tl.arange(0, CPB)
    if CHANNELS_LAST:  # stride_c is 1
        base = c0.to(IDX)
        b_end = C - c0
    else:
        base = c0.to(IDX) * ((stride_c // ALIGN) * ALIGN)
        b_end = B
    return cols, cols < C, base, (b_end // ALIGN) * ALIGN


@triton.jit
def _per_channel_sum(t, CHANNELS_LAST: tl.constexpr):
    """Sum a tile's slots into one value per channel of the block: [CPB]."""
    if CHANNELS_LAST:
        s = tl.sum(t, 0)
    else:
        s = tl.sum(tl.sum(t, 1, keep_dims=True), 0)
    return s


@triton.jit
def _params(weight, bias, cols, cmask, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    w = tl.load(weight + cols, mask=cmask, other=1.0).to(ACC) if HAS_WEIGHT else tl.full(cols.shape, 1.0, ACC)
    b = tl.load(bias + cols, mask=cmask, other=0.0).to(ACC) if HAS_BIAS else tl.full(cols.shape, 0.0, ACC)
    return w, b


@triton.jit
def _shift(x, cols, cmask, stride_c, SHIFTED: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr):
    """The shifted-data algorithm's shift: each channel's first value (row 0, column 0), or 0."""
    shift = tl.zeros(cols.shape, ACC)
    if SHIFTED:
        shift = tl.load(x + cols.to(IDX) * stride_c, mask=cmask, other=0.0).to(ACC)
    return shift


@triton.jit
def _finish_statistics(shift, mean, var, M, eps, momentum, cols, smask, mean_out, rstd_out,
                       running_mean, running_var, new_running_mean, new_running_var, HAS_RUNNING: tl.constexpr,
                       SKIP_NON_FINITE: tl.constexpr):
    """rstd from the biased var; store mean (of x - shift), rstd; new running = running + momentum (batch - running).

    With SKIP_NON_FINITE a channel whose new running statistics are not finite keeps its
    old ones (the layers' "skip" policy, decided on the device: nothing waits for it).
    """
    rstd = 1 / tl.sqrt(var + eps)
    tl.store(mean_out + cols, mean, mask=smask)
    tl.store(rstd_out + cols, rstd, mask=smask)
    if HAS_RUNNING:
        rm = tl.load(running_mean + cols, mask=smask, other=0.0).to(mean.dtype)
        rv = tl.load(running_var + cols, mask=smask, other=0.0).to(mean.dtype)
        unbiased = var * M / tl.maximum(M - 1, 1)  # var first: M may be an integer
        new_mean = rm + momentum * (shift + mean - rm)
        new_var = rv + momentum * (unbiased - rv)
        if SKIP_NON_FINITE:
            finite = (tl.abs(new_mean) < float("inf")) & (tl.abs(new_var) < float("inf"))  # False for NaN too
            new_mean = tl.where(finite, new_mean, rm)
            new_var = tl.where(finite, new_var, rv)
        tl.store(new_running_mean + cols, new_mean, mask=smask)
        tl.store(new_running_var + cols, new_var, mask=smask)
    return rstd


@triton.jit
def _arrive_last(counter, block, N_CHUNKS):
    """Whether this program is the last of its channel block's chunks to finish.

    Its partials are stored before it arrives (the barrier, then an acq_rel atomic at
    GPU scope), so the last to arrive sees every chunk's partials. The last one sets the
    counter back to 0: the launch leaves the counters as it found them.
    """
    tl.debug_barrier()
    last = tl.atomic_add(counter + block, 1) == N_CHUNKS - 1
    tl.store(counter + block, 0, mask=last)
    return last


# --- kernels: forward -------------------------------------------------------------------
#
# The split kernels share a skeleton: _chunk says where the program works, _channels
# which channels; a loop over the chunk's full tiles (no row mask, the column mask of
# every full tile fixed: `fm`, None when columns need none), software-pipelined; then a
# loop over what is left (a ragged last row tile, or every tile when column tiles are
# ragged), masked. A tile's offsets are `base + rows[:, None] * stride_a + columns[None, :]`.
# Columns masked in full tiles load nothing and leave garbage in their slots, which are
# never stored and are dropped (count 0, or zeroed) before anything is summed.


@triton.jit
def _forward_on_chip(x, y, residual, weight, bias, mean_out, rstd_out, running_mean, running_var,
                     new_running_mean, new_running_var, A, B, C, stride_a, stride_c, eps, momentum, param,
                     HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     HAS_RUNNING: tl.constexpr, SKIP_NON_FINITE: tl.constexpr, ACTIVATION: tl.constexpr,
                     SHIFTED: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, CPB: tl.constexpr, ALIGN: tl.constexpr, IDX: tl.constexpr,
                     ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Training forward of one channel block whose values fit one tile: x is read once."""
    cols, cmask, base, b_end = _channels(tl.program_id(0), C, B, stride_c, CHANNELS_LAST, CPB, ALIGN, IDX)
    ar = tl.arange(0, BLOCK_A)
    br = tl.arange(0, BLOCK_B)
    mask = (ar < A)[:, None] & (br < b_end)[None, :]
    offs = base + ar.to(IDX)[:, None] * ((stride_a // ALIGN) * ALIGN) + br[None, :]
    M = A if CHANNELS_LAST else A * B
    shift = _shift(x, cols, cmask, stride_c, SHIFTED, IDX, ACC)
    xv = tl.where(mask, tl.load(x + offs, mask=mask, other=0.0).to(ACC) - shift[None, :], 0.0)
    mean = _per_channel_sum(xv, CHANNELS_LAST) / M
    x_c = tl.where(mask, xv - mean[None, :], 0.0)
    var = _per_channel_sum(x_c * x_c, CHANNELS_LAST) / M
    rstd = _finish_statistics(shift, mean, var, M, eps, momentum, cols, cmask, mean_out, rstd_out,
                              running_mean, running_var, new_running_mean, new_running_var, HAS_RUNNING,
                              SKIP_NON_FINITE)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    z = x_c * (rstd * w)[None, :] + b[None, :]
    if HAS_RESIDUAL:
        z += tl.load(residual + offs, mask=mask, other=0.0).to(ACC)
    tl.store(y + offs, _activate(z, param, ACTIVATION), mask=mask)


@triton.jit
def _forward_statistics(x, partial, counter, mean_out, rstd_out, running_mean, running_var,
                        new_running_mean, new_running_var, A, B, C, stride_a, stride_c,
                        CHUNK_A, B_CHUNKS, N_CHUNKS, eps, momentum,
                        HAS_RUNNING: tl.constexpr, SKIP_NON_FINITE: tl.constexpr, SHIFTED: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr,
                        CPB: tl.constexpr, BLOCK_B: tl.constexpr, B_T: tl.constexpr, ALIGN: tl.constexpr,
                        MASK_B: tl.constexpr, EVEN_B: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr,
                        ELT: tl.constexpr, KB: tl.constexpr, TILE_BYTES: tl.constexpr, STAGES: tl.constexpr):
    """Per chunk: mean of x - shift, sum of squared deviations and count; the last program merges them.

    Each slot of the tile keeps its own Welford state. Over the full tiles every valid
    slot has seen the same count, so the update divides once per tile; what is left
    counts per slot.
    """
    BLOCK_A: tl.constexpr = TILE_BYTES // (ELT * BLOCK_B)
    chunk, block, a_lo, a_hi, b_lo = _chunk(N_CHUNKS, B_CHUNKS, CHUNK_A, A, B_T, BLOCK_B)
    cols, cmask, base, b_end = _channels(block, C, B, stride_c, CHANNELS_LAST, CPB, ALIGN, IDX)
    stride_a = (stride_a // ALIGN) * ALIGN
    ar = tl.arange(0, BLOCK_A)
    br = tl.arange(0, BLOCK_B)
    bmask = (br < b_end)[None, :]
    fm = bmask if MASK_B else None
    shift_c = _shift(x, cols, cmask, stride_c, SHIFTED, IDX, ACC)
    shift = shift_c[None, :]
    mean = tl.zeros([BLOCK_A, BLOCK_B], ACC)
    m2 = tl.zeros([BLOCK_A, BLOCK_B], ACC)
    full = ((a_hi - a_lo) // BLOCK_A) * B_T if EVEN_B else 0
    for i in tl.range(0, full, num_stages=STAGES):
        rows = (a_lo + (i // B_T) * BLOCK_A + ar).to(IDX)
        offs = base + rows[:, None] * stride_a + (b_lo + (i % B_T) * BLOCK_B + br)[None, :]
        v = tl.load(x + offs, mask=fm).to(ACC) - shift
        delta = v - mean
        mean += delta * (1 / tl.cast(i + 1, ACC))
        m2 += delta * (v - mean)
    count = tl.zeros([BLOCK_A, BLOCK_B], ACC) + full
    if MASK_B:
        count = tl.where(bmask, count, 0.0)
    for i in range(full, tl.cdiv(a_hi - a_lo, BLOCK_A) * B_T):
        a0 = a_lo + (i // B_T) * BLOCK_A
        b0 = b_lo + (i % B_T) * BLOCK_B
        mask = (a0 + ar < a_hi)[:, None] & (b0 + br < b_end)[None, :]
        offs = base + (a0 + ar).to(IDX)[:, None] * stride_a + (b0 + br)[None, :]
        v = tl.load(x + offs, mask=mask, other=0.0).to(ACC) - shift
        count += tl.where(mask, 1.0, 0.0)
        delta = tl.where(mask, v - mean, 0.0)
        mean += delta / tl.maximum(count, 1.0)
        m2 += delta * (v - mean)
    mean = tl.where(count > 0, mean, 0.0)
    m2 = tl.where(count > 0, m2, 0.0)
    if CHANNELS_LAST:
        mean_c, m2_c, n_c = tl.reduce((mean, m2, count), 0, _chan)
    else:
        mean_r, m2_r, n_r = tl.reduce((mean, m2, count), 1, _chan)
        mean_s, m2_s, n_s = tl.reduce((mean_r, m2_r, n_r), 0, _chan)
        one = tl.zeros([1], ACC)
        mean_c, m2_c, n_c = one + mean_s, one + m2_s, one + n_s
    row = tl.cast(C, IDX)  # the partials' offsets: IDX too
    part = partial + chunk * row + cols
    tl.store(part, mean_c, mask=cmask)
    tl.store(part + N_CHUNKS * row, m2_c, mask=cmask)
    tl.store(part + 2 * N_CHUNKS * row, n_c, mask=cmask)
    if _arrive_last(counter, block, N_CHUNKS):
        # every chunk's partials, KB at a time, in chunk order (Chan's formula again)
        k = tl.arange(0, KB)
        mean_all = tl.zeros([CPB], ACC)
        m2_all = tl.zeros([CPB], ACC)
        total = tl.zeros([CPB], ACC)
        for k0 in range(0, N_CHUNKS, KB):
            idx = (k0 + k)[:, None] * row + cols[None, :]
            kmask = (k0 + k < N_CHUNKS)[:, None] & cmask[None, :]
            mean_k = tl.load(partial + idx, mask=kmask, other=0.0, cache_modifier=".cg")
            m2_k = tl.load(partial + N_CHUNKS * row + idx, mask=kmask, other=0.0, cache_modifier=".cg")
            n_k = tl.load(partial + 2 * N_CHUNKS * row + idx, mask=kmask, other=0.0, cache_modifier=".cg")
            mean_b, m2_b, n_b = tl.reduce((mean_k, m2_k, n_k), 0, _chan)
            mean_all, m2_all, total = _chan(mean_all, m2_all, total, mean_b, m2_b, n_b)
        M = tl.maximum(total, 1.0)
        _finish_statistics(shift_c, mean_all, m2_all / M, M, eps, momentum, cols, cmask, mean_out, rstd_out,
                           running_mean, running_var, new_running_mean, new_running_var, HAS_RUNNING,
                           SKIP_NON_FINITE)


@triton.jit
def _forward_apply(x, y, residual, weight, bias, mean_out, rstd_out, running_mean, running_var,
                   A, B, C, stride_a, stride_c, CHUNK_A, B_CHUNKS, N_CHUNKS, eps, param,
                   TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, SHIFTED: tl.constexpr,
                   CHANNELS_LAST: tl.constexpr, CPB: tl.constexpr, BLOCK_B: tl.constexpr, B_T: tl.constexpr,
                   ALIGN: tl.constexpr,
                   MASK_B: tl.constexpr, EVEN_B: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr,
                   ELT: tl.constexpr, TILE_BYTES: tl.constexpr, STAGES: tl.constexpr):
    """y = act((x - shift) * scale + offset (+ r)) over one chunk.

    Training: the statistics the statistics kernel finished. Inference: the running
    statistics; chunk 0 stores them as mean, rstd. With SHIFTED the mean is subtracted
    before scaling (x - shift is exact); 16-bit inputs take one multiply-add.
    """
    BLOCK_A: tl.constexpr = TILE_BYTES // (ELT * BLOCK_B)
    chunk, block, a_lo, a_hi, b_lo = _chunk(N_CHUNKS, B_CHUNKS, CHUNK_A, A, B_T, BLOCK_B)
    cols, cmask, base, b_end = _channels(block, C, B, stride_c, CHANNELS_LAST, CPB, ALIGN, IDX)
    stride_a = (stride_a // ALIGN) * ALIGN
    if TRAINING:
        shift = _shift(x, cols, cmask, stride_c, SHIFTED, IDX, ACC)
        mean = tl.load(mean_out + cols, mask=cmask, other=0.0)
        rstd = tl.load(rstd_out + cols, mask=cmask, other=1.0)
    else:
        mean = tl.load(running_mean + cols, mask=cmask, other=0.0).to(ACC)
        rstd = 1 / tl.sqrt(tl.load(running_var + cols, mask=cmask, other=1.0).to(ACC) + eps)
        smask = cmask & (cols * 0 + chunk == 0)
        tl.store(mean_out + cols, mean, mask=smask)
        tl.store(rstd_out + cols, rstd, mask=smask)
        shift = tl.zeros([CPB], ACC)
        if SHIFTED:
            shift = mean
            mean = tl.zeros([CPB], ACC)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    scale = (rstd * w)[None, :]
    offset = (b - mean * rstd * w)[None, :]
    shift = shift[None, :]
    ar = tl.arange(0, BLOCK_A)
    br = tl.arange(0, BLOCK_B)
    fm = (br < b_end)[None, :] if MASK_B else None
    full = ((a_hi - a_lo) // BLOCK_A) * B_T if EVEN_B else 0
    for i in tl.range(0, full, num_stages=STAGES):
        rows = (a_lo + (i // B_T) * BLOCK_A + ar).to(IDX)
        offs = base + rows[:, None] * stride_a + (b_lo + (i % B_T) * BLOCK_B + br)[None, :]
        z = (tl.load(x + offs, mask=fm).to(ACC) - shift) * scale + offset
        if HAS_RESIDUAL:
            z += tl.load(residual + offs, mask=fm).to(ACC)
        tl.store(y + offs, _activate(z, param, ACTIVATION), mask=fm)
    for i in range(full, tl.cdiv(a_hi - a_lo, BLOCK_A) * B_T):
        a0 = a_lo + (i // B_T) * BLOCK_A
        b0 = b_lo + (i % B_T) * BLOCK_B
        mask = (a0 + ar < a_hi)[:, None] & (b0 + br < b_end)[None, :]
        offs = base + (a0 + ar).to(IDX)[:, None] * stride_a + (b0 + br)[None, :]
        z = (tl.load(x + offs, mask=mask, other=0.0).to(ACC) - shift) * scale + offset
        if HAS_RESIDUAL:
            z += tl.load(residual + offs, mask=mask, other=0.0).to(ACC)
        tl.store(y + offs, _activate(z, param, ACTIVATION), mask=mask)


# --- kernels: backward ------------------------------------------------------------------


@triton.jit
def _recompute(saved, dy, residual, offs, mask, other, shift, mean, rstd, w, b, inv_w, param,
               HAS_RESIDUAL: tl.constexpr, FROM_OUTPUT: tl.constexpr, ACTIVATION: tl.constexpr,
               ACC: tl.constexpr):
    """(x_hat, dz) of a tile, from the saved input x (and r) or, with FROM_OUTPUT, from y alone."""
    s = tl.load(saved + offs, mask=mask, other=other).to(ACC)
    g = tl.load(dy + offs, mask=mask, other=other).to(ACC)
    if FROM_OUTPUT:
        z = _invert(s, param, ACTIVATION)
        x_hat = (z - b) * inv_w
    else:
        x_hat = (s - shift - mean) * rstd
        z = x_hat * w + b
        if HAS_RESIDUAL:
            z += tl.load(residual + offs, mask=mask, other=other).to(ACC)
    dz = g if ACTIVATION == "identity" else g * _activation_grad(z, param, ACTIVATION)
    return x_hat, dz


@triton.jit
def _backward_on_chip(dy, saved, residual, weight, bias, mean, rstd, dx, dres, dweight, dbias,
                      A, B, C, stride_a, stride_c, param,
                      TRAINING: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      HAS_RESIDUAL: tl.constexpr, RESIDUAL_GRAD: tl.constexpr,
                      FROM_OUTPUT: tl.constexpr, SHIFTED: tl.constexpr, ACTIVATION: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, CPB: tl.constexpr, ALIGN: tl.constexpr, IDX: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Backward of one channel block whose values fit one tile: the saved tensor and dy are read once."""
    cols, cmask, base, b_end = _channels(tl.program_id(0), C, B, stride_c, CHANNELS_LAST, CPB, ALIGN, IDX)
    ar = tl.arange(0, BLOCK_A)
    br = tl.arange(0, BLOCK_B)
    mask = (ar < A)[:, None] & (br < b_end)[None, :]
    offs = base + ar.to(IDX)[:, None] * ((stride_a // ALIGN) * ALIGN) + br[None, :]
    M = A if CHANNELS_LAST else A * B
    shift = _shift(saved, cols, cmask, stride_c, SHIFTED, IDX, ACC)[None, :]
    mu = tl.load(mean + cols, mask=cmask, other=0.0)[None, :]
    r = tl.load(rstd + cols, mask=cmask, other=1.0)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    x_hat, dz = _recompute(saved, dy, residual, offs, mask, 0.0, shift, mu, r[None, :], w[None, :], b[None, :],
                           (1 / w)[None, :], param, HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
    x_hat = tl.where(mask, x_hat, 0.0)
    dz = tl.where(mask, dz, 0.0)
    sum_dz = _per_channel_sum(dz, CHANNELS_LAST)
    sum_dz_xhat = _per_channel_sum(dz * x_hat, CHANNELS_LAST)
    tl.store(dweight + cols, sum_dz_xhat, mask=cmask)
    tl.store(dbias + cols, sum_dz, mask=cmask)
    g = dz
    if TRAINING:
        g = dz - (sum_dz[None, :] + x_hat * sum_dz_xhat[None, :]) / M
    tl.store(dx + offs, g * (w * r)[None, :], mask=mask)
    if RESIDUAL_GRAD:
        tl.store(dres + offs, dz, mask=mask)


@triton.jit
def _backward_sums(dy, saved, residual, weight, bias, mean, rstd, dx, dres, dweight, dbias, partial, sums, counter,
                   A, B, C, stride_a, stride_c, CHUNK_A, B_CHUNKS, N_CHUNKS, param,
                   WRITE_DX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_RESIDUAL: tl.constexpr, RESIDUAL_GRAD: tl.constexpr, FROM_OUTPUT: tl.constexpr,
                   SHIFTED: tl.constexpr, ACTIVATION: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                   CPB: tl.constexpr, BLOCK_B: tl.constexpr, B_T: tl.constexpr, ALIGN: tl.constexpr,
                   MASK_B: tl.constexpr, EVEN_B: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr,
                   ELT: tl.constexpr, KB: tl.constexpr, TILE_BYTES: tl.constexpr, STAGES: tl.constexpr):
    """Per chunk: sum(dz) and sum(dz * x_hat); the last program adds them up into dbias, dweight.

    With WRITE_DX (inference: dx = gamma * rstd * dz needs no sums) dx, and dres = dz,
    are written in the same pass.
    """
    BLOCK_A: tl.constexpr = TILE_BYTES // (ELT * BLOCK_B)
    chunk, block, a_lo, a_hi, b_lo = _chunk(N_CHUNKS, B_CHUNKS, CHUNK_A, A, B_T, BLOCK_B)
    cols, cmask, base, b_end = _channels(block, C, B, stride_c, CHANNELS_LAST, CPB, ALIGN, IDX)
    stride_a = (stride_a // ALIGN) * ALIGN
    shift = _shift(saved, cols, cmask, stride_c, SHIFTED, IDX, ACC)[None, :]
    mu = tl.load(mean + cols, mask=cmask, other=0.0)[None, :]
    r = tl.load(rstd + cols, mask=cmask, other=1.0)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    gain = (w * r)[None, :]
    inv_w = (1 / w)[None, :]
    r = r[None, :]
    w = w[None, :]
    b = b[None, :]
    ar = tl.arange(0, BLOCK_A)
    br = tl.arange(0, BLOCK_B)
    bmask = (br < b_end)[None, :]
    fm = bmask if MASK_B else None
    acc_dz = tl.zeros([BLOCK_A, BLOCK_B], ACC)
    acc_dzx = tl.zeros([BLOCK_A, BLOCK_B], ACC)
    full = ((a_hi - a_lo) // BLOCK_A) * B_T if EVEN_B else 0
    for i in tl.range(0, full, num_stages=STAGES):
        rows = (a_lo + (i // B_T) * BLOCK_A + ar).to(IDX)
        offs = base + rows[:, None] * stride_a + (b_lo + (i % B_T) * BLOCK_B + br)[None, :]
        x_hat, dz = _recompute(saved, dy, residual, offs, fm, None, shift, mu, r, w, b, inv_w, param,
                               HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
        acc_dz += dz
        acc_dzx += dz * x_hat
        if WRITE_DX:
            tl.store(dx + offs, dz * gain, mask=fm)
            if RESIDUAL_GRAD:
                tl.store(dres + offs, dz, mask=fm)
    if MASK_B:
        acc_dz = tl.where(bmask, acc_dz, 0.0)
        acc_dzx = tl.where(bmask, acc_dzx, 0.0)
    for i in range(full, tl.cdiv(a_hi - a_lo, BLOCK_A) * B_T):
        a0 = a_lo + (i // B_T) * BLOCK_A
        b0 = b_lo + (i % B_T) * BLOCK_B
        mask = (a0 + ar < a_hi)[:, None] & (b0 + br < b_end)[None, :]
        offs = base + (a0 + ar).to(IDX)[:, None] * stride_a + (b0 + br)[None, :]
        x_hat, dz = _recompute(saved, dy, residual, offs, mask, 0.0, shift, mu, r, w, b, inv_w, param,
                               HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
        dz = tl.where(mask, dz, 0.0)
        acc_dz += dz
        acc_dzx += tl.where(mask, dz * x_hat, 0.0)
        if WRITE_DX:
            tl.store(dx + offs, dz * gain, mask=mask)
            if RESIDUAL_GRAD:
                tl.store(dres + offs, dz, mask=mask)
    row = tl.cast(C, IDX)  # the partials' offsets: IDX too
    part = partial + chunk * row + cols
    tl.store(part, _per_channel_sum(acc_dz, CHANNELS_LAST), mask=cmask)
    tl.store(part + N_CHUNKS * row, _per_channel_sum(acc_dzx, CHANNELS_LAST), mask=cmask)
    if _arrive_last(counter, block, N_CHUNKS):
        k = tl.arange(0, KB)
        sum_dz = tl.zeros([CPB], ACC)
        sum_dzx = tl.zeros([CPB], ACC)
        for k0 in range(0, N_CHUNKS, KB):
            idx = (k0 + k)[:, None] * row + cols[None, :]
            kmask = (k0 + k < N_CHUNKS)[:, None] & cmask[None, :]
            sum_dz += tl.sum(tl.load(partial + idx, mask=kmask, other=0.0, cache_modifier=".cg"), 0)
            sum_dzx += tl.sum(tl.load(partial + N_CHUNKS * row + idx, mask=kmask, other=0.0, cache_modifier=".cg"), 0)
        tl.store(sums + cols, sum_dz, mask=cmask)
        tl.store(sums + C + cols, sum_dzx, mask=cmask)
        tl.store(dbias + cols, sum_dz, mask=cmask)
        tl.store(dweight + cols, sum_dzx, mask=cmask)


@triton.jit
def _backward_apply(dy, saved, residual, weight, bias, mean, rstd, dx, dres, sums,
                    A, B, C, stride_a, stride_c, CHUNK_A, B_CHUNKS, N_CHUNKS, param,
                    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                    RESIDUAL_GRAD: tl.constexpr, FROM_OUTPUT: tl.constexpr, SHIFTED: tl.constexpr,
                    ACTIVATION: tl.constexpr, CHANNELS_LAST: tl.constexpr, CPB: tl.constexpr,
                    BLOCK_B: tl.constexpr, B_T: tl.constexpr, ALIGN: tl.constexpr, MASK_B: tl.constexpr,
                    EVEN_B: tl.constexpr, IDX: tl.constexpr, ACC: tl.constexpr, ELT: tl.constexpr,
                    TILE_BYTES: tl.constexpr, STAGES: tl.constexpr):
    """Training dx = gain * dz - gain / M * (sum_dz + x_hat * sum_dzx) (and dres = dz) over one chunk."""
    BLOCK_A: tl.constexpr = TILE_BYTES // (ELT * BLOCK_B)
    chunk, block, a_lo, a_hi, b_lo = _chunk(N_CHUNKS, B_CHUNKS, CHUNK_A, A, B_T, BLOCK_B)
    cols, cmask, base, b_end = _channels(block, C, B, stride_c, CHANNELS_LAST, CPB, ALIGN, IDX)
    stride_a = (stride_a // ALIGN) * ALIGN
    M = A if CHANNELS_LAST else A * B
    shift = _shift(saved, cols, cmask, stride_c, SHIFTED, IDX, ACC)[None, :]
    mu = tl.load(mean + cols, mask=cmask, other=0.0)[None, :]
    r = tl.load(rstd + cols, mask=cmask, other=1.0)
    w, b = _params(weight, bias, cols, cmask, HAS_WEIGHT, HAS_BIAS, ACC)
    gain = w * r
    k_dz = (-gain / M * tl.load(sums + cols, mask=cmask, other=0.0))[None, :]
    k_dzx = (-gain / M * tl.load(sums + C + cols, mask=cmask, other=0.0))[None, :]
    gain = gain[None, :]
    inv_w = (1 / w)[None, :]
    r = r[None, :]
    w = w[None, :]
    b = b[None, :]
    ar = tl.arange(0, BLOCK_A)
    br = tl.arange(0, BLOCK_B)
    fm = (br < b_end)[None, :] if MASK_B else None
    full = ((a_hi - a_lo) // BLOCK_A) * B_T if EVEN_B else 0
    for i in tl.range(0, full, num_stages=STAGES):
        rows = (a_lo + (i // B_T) * BLOCK_A + ar).to(IDX)
        offs = base + rows[:, None] * stride_a + (b_lo + (i % B_T) * BLOCK_B + br)[None, :]
        x_hat, dz = _recompute(saved, dy, residual, offs, fm, None, shift, mu, r, w, b, inv_w, param,
                               HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
        tl.store(dx + offs, dz * gain + (x_hat * k_dzx + k_dz), mask=fm)
        if RESIDUAL_GRAD:
            tl.store(dres + offs, dz, mask=fm)
    for i in range(full, tl.cdiv(a_hi - a_lo, BLOCK_A) * B_T):
        a0 = a_lo + (i // B_T) * BLOCK_A
        b0 = b_lo + (i % B_T) * BLOCK_B
        mask = (a0 + ar < a_hi)[:, None] & (b0 + br < b_end)[None, :]
        offs = base + (a0 + ar).to(IDX)[:, None] * stride_a + (b0 + br)[None, :]
        x_hat, dz = _recompute(saved, dy, residual, offs, mask, 0.0, shift, mu, r, w, b, inv_w, param,
                               HAS_RESIDUAL, FROM_OUTPUT, ACTIVATION, ACC)
        tl.store(dx + offs, dz * gain + (x_hat * k_dzx + k_dz), mask=mask)
        if RESIDUAL_GRAD:
            tl.store(dres + offs, dz, mask=mask)


# --- autotuning -------------------------------------------------------------------------

INTERPRETED = not isinstance(_forward_on_chip, triton.runtime.JITFunction)  # TRITON_INTERPRET=1

# (tile bytes, warps, pipeline stages) the loop kernels are tuned over: 8-32 KB of a
# tile in flight per program, deeper pipelines for smaller tiles. The interpreter takes
# the first (it would time every one).
CONFIGS = ((8192, 4, 3), (16384, 4, 2), (16384, 8, 3), (32768, 8, 2))
MIN_TILE_BYTES = min(t for t, _, _ in CONFIGS)
# What changes the best configuration: the layout and tile width (which way the rows
# run, how long they are), the proven alignment (the width of a load), whether columns
# are masked, the activation (work per element); the autotuner adds the tensors' dtypes.
TUNING_KEY = ["CHANNELS_LAST", "BLOCK_B", "ALIGN", "MASK_B", "EVEN_B"]


def _autotuned(restore=(), reset=()):
    """triton.autotune over CONFIGS, timing each for a few milliseconds (the default is 125 ms)."""
    configs = [triton.Config({"TILE_BYTES": t, "STAGES": s}, num_warps=w, num_stages=s) for t, w, s in CONFIGS]
    options = dict(configs=configs[:1] if INTERPRETED else configs, key=TUNING_KEY,
                   restore_value=list(restore) or None, reset_to_zero=list(reset) or None)
    if "do_bench" in inspect.signature(triton.autotune).parameters:
        from triton.testing import do_bench

        options["do_bench"] = lambda fn, quantiles: do_bench(fn, warmup=5, rep=20, quantiles=quantiles)
    return triton.autotune(**options)


_forward_statistics_tuned = _autotuned(restore=("new_running_mean", "new_running_var"),
                                       reset=("counter",))(_forward_statistics)
_forward_apply_tuned = _autotuned()(_forward_apply)
_backward_sums_tuned = _autotuned(reset=("counter",))(_backward_sums)
_backward_apply_tuned = _autotuned()(_backward_apply)
TUNED = {_forward_statistics: _forward_statistics_tuned, _forward_apply: _forward_apply_tuned,
         _backward_sums: _backward_sums_tuned, _backward_apply: _backward_apply_tuned}


# --- planning ---------------------------------------------------------------------------

ON_CHIP = 8192  # largest tile, in elements, that holds a whole channel block (backward keeps x and dy in it)
ROW_BYTES = 128  # channels-last: the channels of a tile row (one cache line)
MAX_CHUNKS = 1024  # chunks per channel block
MERGE_TILE = 2048  # partials the last program of a channel block loads at a time
MIN_CHUNK_BYTES = 8192  # a chunk is worth a program from this much data on (one tile of the smallest config)
WAVES = 2  # programs per launch: at least two waves of
PROGRAMS_PER_SM = 4  # ... this many programs resident on each multiprocessor
INT32_LIMIT = 2**31


class Plan(NamedTuple):
    """How a launch walks an (A rows, B columns) view of each channel (see the module docstring).

    ``channel_blocks`` programs (on chip), or ``n_chunks`` per channel block (split):
    chunks of ``chunk_a`` rows, and for channels-first, ``b_chunks`` column ranges of
    ``b_t`` column tiles of ``block_b``. ``mask_b``: columns need a mask; ``even_b``:
    every full tile has the same column mask (one column tile a row, or rows a multiple
    of the tile's width), so full tiles need no other. ``align`` divides every stride
    and masked bound (in elements: the widest load the compiler may use); ``big``:
    64-bit offsets. ``config`` forces (tile bytes, warps, stages) instead of autotuning.
    """

    on_chip: bool
    channels_last: bool
    A: int
    B: int
    C: int
    stride_a: int
    stride_c: int
    block_a: int  # on chip: the tile's rows
    block_b: int
    channel_blocks: int
    chunk_a: int
    b_chunks: int
    b_t: int
    n_chunks: int
    align: int
    mask_b: bool
    even_b: bool
    big: bool
    num_warps: int
    config: tuple[int, int, int] | None = None

    @property
    def cpb(self) -> int:
        """Channels per block."""
        return self.block_b if self.channels_last else 1

    @property
    def merge_rows(self) -> int:
        """Chunks' partials the finishing program loads at a time."""
        return min(_pow2(self.n_chunks), max(1, MERGE_TILE // self.cpb))

    @property
    def grid(self) -> tuple[int]:
        return (self.channel_blocks if self.on_chip else self.n_chunks * self.channel_blocks,)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _programs_wanted(device_type: str, index: int | None) -> int:
    if device_type == "cuda":
        return WAVES * PROGRAMS_PER_SM * torch.cuda.get_device_properties(index).multi_processor_count
    return 4  # the interpreter: a few


def programs_wanted(device: torch.device) -> int:
    """Programs a split launch aims at: two waves of four programs per multiprocessor (the interpreter: a few)."""
    return _programs_wanted(device.type, device.index if device.type != "cuda" else
                            (device.index if device.index is not None else torch.cuda.current_device()))


def geometry(shape, strides):
    """``(channels_last, A, B, stride_a, stride_c)`` of a tensor, or None when its layout needs a copy.

    (Cached: :func:`_geometry`.)

    Channels-last needs C contiguous and rows evenly spaced; channels-first needs the
    spatial axes to merge into one contiguous axis.
    """
    N, C = shape[:2]
    S = math.prod(shape[2:])
    dims = [(n, s) for n, s in zip(shape[2:], strides[2:]) if n != 1]
    if any(outer != inner * n for (_, outer), (n, inner) in zip(dims, dims[1:])):
        return None
    stride_s = dims[-1][1] if dims else 1
    if C > 1 and strides[1] == 1:
        if S == 1:
            return True, N, C, strides[0], 1
        if N == 1 or strides[0] == S * stride_s:
            return True, N * S, C, stride_s, 1
        return None
    if S == 1 or stride_s == 1:
        return False, N, S, strides[0], strides[1]
    return None


_geometry = functools.lru_cache(maxsize=4096)(geometry)


def _largest_divisor(n: int, at_most: int) -> int:
    return next(d for d in range(max(1, min(n, at_most)), 0, -1) if n % d == 0)


@functools.lru_cache(maxsize=4096)
def _plan(shape, strides, elt, programs, on_chip, block_b, config, chunk_a, b_t, big) -> Plan:
    channels_last, A, B, stride_a, stride_c = _geometry(shape, strides)
    C = shape[1]
    if channels_last:
        block_b = block_b or min(_pow2(C), max(1, ROW_BYTES // elt))
        channel_blocks, extent = -(-C // block_b), C
    else:
        widest = MIN_TILE_BYTES // elt
        if block_b is None:
            low_bit = B & -B  # the largest power of two dividing S: column tiles without a ragged end
            if low_bit >= min(B, 64):  # S a power of two, or a multiple of 64: unmasked tiles
                block_b = min(low_bit, widest)
            else:  # one masked tile spans the row, or (wider than a tile) ragged tiles
                block_b = min(_pow2(B), widest)
        channel_blocks, extent = C, B
    mask_b = extent % block_b != 0
    even_b = channels_last or B <= block_b or not mask_b
    rows = _pow2(A)
    if on_chip is None:
        on_chip = (channels_last or B <= block_b) and rows * block_b <= ON_CHIP
    # the widest load the strides and masked bounds allow, in elements
    align = 16 // elt
    for v in (stride_a if A > 1 else 0, stride_c if (C > 1 and not channels_last) else 0,
              extent if mask_b else 0, block_b):
        align = math.gcd(align, v)
    span = sum((n - 1) * abs(s) for n, s in zip(shape, strides)) + 1
    big = span >= INT32_LIMIT if big is None else big
    if on_chip:
        return Plan(True, channels_last, A, B, C, stride_a, stride_c, rows, block_b, channel_blocks, A, 1, 1, 1,
                    align, mask_b, even_b, big, 8 if rows * block_b > 4096 else 4, config)
    per_block = A * (block_b if channels_last else B) * elt
    want = max(1, min(-(-programs // channel_blocks), MAX_CHUNKS, per_block // MIN_CHUNK_BYTES))
    if chunk_a is None:
        chunk_a = max(1, A // want, -(-A // MAX_CHUNKS))  # rounded down: at least the chunks wanted
    a_chunks = -(-A // chunk_a)
    b_tiles = 1 if channels_last else -(-B // block_b)
    b_chunks = _largest_divisor(b_tiles, -(-want // a_chunks) if b_t is None else -(-b_tiles // b_t))
    b_t = b_tiles // b_chunks
    n_chunks = a_chunks * b_chunks
    big = big or 3 * n_chunks * C >= INT32_LIMIT  # the partials' offsets
    return Plan(False, channels_last, A, B, C, stride_a, stride_c, 0, block_b, channel_blocks, chunk_a, b_chunks, b_t,
                n_chunks, align, mask_b, even_b, big, 4, config)


def plan(t: torch.Tensor, programs: int | None = None, **forced) -> Plan:
    """The plan for a tensor like ``t`` (cached per shape, strides, dtype and device).

    Keywords force a choice (tests use them to run the split path, with small tiles, on
    small shapes): ``on_chip``; ``block_b`` (columns per tile, channels per block when
    channels-last); ``config`` = (tile bytes, warps, stages); ``chunk_a`` rows per chunk;
    ``b_t`` column tiles per chunk (at most; channels-first); ``big``, 64-bit offsets;
    ``programs``, the programs a split launch aims at (by default, for t's device).
    """
    if forced or programs is not None:
        return _plan_uncached(t, programs, **forced)
    key = (t.shape, t.stride(), t.dtype, t.device)
    p = _PLANS.get(key)
    if p is None:
        p = _PLANS[key] = _plan_uncached(t, None)
    return p


_PLANS: dict = {}  # (shape, strides, dtype, device) -> Plan: one dictionary lookup a launch


def _plan_uncached(t, programs, **forced) -> Plan:
    if _geometry(tuple(t.shape), t.stride()) is None:
        raise ValueError(f"triton batch norm: strides {t.stride()} of shape {tuple(t.shape)} need a copy first")
    options = {k: forced.get(k) for k in ("on_chip", "block_b", "config", "chunk_a", "b_t", "big")}
    return _plan(tuple(t.shape), t.stride(), t.element_size(), programs or programs_wanted(t.device), **options)


# --- launch -----------------------------------------------------------------------------


def _shifted(dtype: torch.dtype) -> bool:
    """Whether the shift is worth its subtraction: 16-bit inputs carry far less precision than
    their float32 mean, so it only matters for float32 and float64."""
    return dtype in (torch.float32, torch.float64)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _in_layout(t, ref):
    """t with ref's strides (a copy only if they differ)."""
    if t is None or t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def _work(out: torch.Tensor):
    """A tensor the kernels can write for ``out``: itself, or a contiguous stand-in."""
    if _geometry(out.shape, out.stride()) is not None:
        return out
    return torch.empty_like(out, memory_format=torch.contiguous_format)


_NOWHERE = contextlib.nullcontext()


def _on_device(t: torch.Tensor):
    """Launch on t's GPU, not the current one (a no-op for CPU tensors, under the interpreter)."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NOWHERE


_COUNTERS: dict = {}


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """At least n zeros the split kernels count arrivals in, kept per device and stream.

    Each launch leaves them 0 again (the last program of each channel block resets its
    counter), so a stream's launches, one after the other, share them without clearing
    them first; other streams get their own. While a CUDA graph is being captured, fresh
    zeros (the memset is captured).
    """
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.zeros(n, device=device, dtype=torch.int32)
        key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    else:
        key = (device.type, device.index)
    counters = _COUNTERS.get(key)
    if counters is None or counters.numel() < n:
        counters = _COUNTERS[key] = torch.zeros(max(n, 1024), device=device, dtype=torch.int32)
    return counters


def _launch(kernel, grid, args, config, **constexprs):
    """kernel[grid](*args), autotuned unless a config (tile bytes, warps, stages) is forced.

    The one place the kernels are launched (benchmarks/bench_host.py replaces it to time
    the host's work alone).
    """
    tuned = TUNED.get(kernel)
    if tuned is None:
        kernel[grid](*args, **constexprs)
    elif config is None:
        tuned[grid](*args, **constexprs)
    else:
        tile, warps, stages = config
        kernel[grid](*args, **constexprs, TILE_BYTES=tile, STAGES=stages, num_warps=warps, num_stages=stages)


def _check(x: torch.Tensor, activation: str):
    if activation not in ACTIVATIONS:
        raise ValueError(f"triton batch norm: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if not 2 <= x.dim() <= 5:
        raise ValueError(f"triton batch norm: expected a 2-D to 5-D input, got shape {tuple(x.shape)}")
    if not (x.is_cuda or INTERPRETED):
        raise RuntimeError(
            "triton batch norm: CPU tensors run only under the Triton interpreter (set "
            "TRITON_INTERPRET=1 before triton is imported); on a GPU pass CUDA tensors"
        )


def _index_type(p: Plan):
    """64-bit offsets where 32 bits could overflow, and where loads are scalar: there the
    compiler advances each element's address with one 64-bit add instead of recomputing it
    (tests/kernels/compile_check.py counts the difference)."""
    return tl.int64 if p.big or p.align == 1 else tl.int32


def _layout_constexprs(p: Plan, elt: int) -> dict:
    return dict(CHANNELS_LAST=p.channels_last, CPB=p.cpb, BLOCK_B=p.block_b, B_T=p.b_t, ALIGN=p.align,
                MASK_B=p.mask_b, EVEN_B=p.even_b, IDX=_index_type(p), ELT=elt)


def forward(x, weight, bias, residual, running_mean, running_var, training: bool, momentum: float,
            eps: float, activation: str = "identity", param: float = 0.0, new_running=None,
            plan_: Plan | None = None, skip_non_finite: bool = False):
    """``y = act(batch_norm(x) + residual)``; returns ``(y, mean, rstd)`` (float32, float64 for float64 x).

    Training uses the batch statistics and, when running_mean/var are given, writes
    their update into ``new_running`` (a pair of tensors like them; by default they
    themselves, in place), except, with ``skip_non_finite``, for channels whose update is
    not finite, which keep their old values. ``mean`` is then the mean of
    ``x - x[first row]`` for float32 and float64 inputs (the shifted-data algorithm), of
    x for 16-bit ones; :func:`backward` takes it as it is. Inference uses the running
    statistics, and mean and rstd returned are theirs.
    """
    _check(x, activation)
    has_running = running_mean is not None and running_var is not None
    if not training and not has_running:
        raise ValueError("triton batch norm: inference needs running_mean and running_var")
    y = torch.empty_like(x)
    work = _work(y)
    x, residual = _in_layout(x, work), _in_layout(residual, work)
    p = plan_ or plan(work)
    C = x.shape[1]
    ACC, acc = _acc(x.dtype)
    mean = torch.empty(C, device=x.device, dtype=acc)
    rstd = torch.empty_like(mean)
    dummy = mean  # stands in for absent optional pointers; never read
    running = (dummy,) * 4
    if has_running:
        running = (running_mean, running_var, *(new_running or (running_mean, running_var)))
    ptrs = (x, work, dummy if residual is None else residual, dummy if weight is None else weight,
            dummy if bias is None else bias, mean, rstd)
    geometry_ = (p.A, p.B, C, p.stride_a, p.stride_c)
    flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
                 ACTIVATION=activation, ACC=ACC)
    shifted = _shifted(x.dtype)
    with _on_device(x):
        if training and p.on_chip:
            _launch(_forward_on_chip, p.grid, (*ptrs, *running, *geometry_, eps, momentum, param), None,
                    HAS_RUNNING=has_running, SKIP_NON_FINITE=skip_non_finite, SHIFTED=shifted,
                    CHANNELS_LAST=p.channels_last, CPB=p.cpb, ALIGN=p.align,
                    IDX=_index_type(p),
                    BLOCK_A=p.block_a, BLOCK_B=p.block_b, num_warps=p.num_warps, **flags)
        else:
            layout = _layout_constexprs(p, x.element_size())
            chunking = (p.chunk_a, p.b_chunks, p.n_chunks)
            if training:
                partial = torch.empty(3 * p.n_chunks * C, device=x.device, dtype=acc)
                counter = _counters(x.device, p.channel_blocks)
                _launch(_forward_statistics, p.grid,
                        (x, partial, counter, mean, rstd, *running, *geometry_, *chunking, eps, momentum), p.config,
                        HAS_RUNNING=has_running, SKIP_NON_FINITE=skip_non_finite, SHIFTED=shifted, ACC=ACC,
                        KB=p.merge_rows, **layout)
            _launch(_forward_apply, p.grid, (*ptrs, *running[:2], *geometry_, *chunking, eps, param), p.config,
                    TRAINING=training, SHIFTED=shifted, **flags, **layout)
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
    p = plan_ or plan(work)
    C = saved.shape[1]
    ACC, acc = _acc(saved.dtype)
    pdtype = weight.dtype if weight is not None else acc
    dweight = torch.empty(C, device=saved.device, dtype=pdtype)
    dbias = torch.empty(C, device=saved.device, dtype=bias.dtype if bias is not None else pdtype)
    dres = torch.empty_like(dx) if residual_grad else dx.new_empty(0)
    dres_work = dres if work is dx or not residual_grad else torch.empty_like(work)
    dummy = mean
    ptrs = (dy, saved, dummy if residual is None else residual, dummy if weight is None else weight,
            dummy if bias is None else bias, mean, rstd, work, dres_work if residual_grad else dummy)
    geometry_ = (p.A, p.B, C, p.stride_a, p.stride_c)
    flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
                 RESIDUAL_GRAD=residual_grad, FROM_OUTPUT=from_output,
                 SHIFTED=training and not from_output and _shifted(saved.dtype),
                 ACTIVATION=activation, ACC=ACC)
    with _on_device(saved):
        if p.on_chip:
            _launch(_backward_on_chip, p.grid, (*ptrs, dweight, dbias, *geometry_, param), None, TRAINING=training,
                    CHANNELS_LAST=p.channels_last, CPB=p.cpb, ALIGN=p.align, IDX=_index_type(p), BLOCK_A=p.block_a,
                    BLOCK_B=p.block_b, num_warps=p.num_warps, **flags)
        else:
            layout = _layout_constexprs(p, saved.element_size())
            chunking = (p.chunk_a, p.b_chunks, p.n_chunks)
            scratch = torch.empty((2 * p.n_chunks + 2) * C, device=saved.device, dtype=acc)
            partial, sums = scratch[:2 * p.n_chunks * C], scratch[2 * p.n_chunks * C:]
            counter = _counters(saved.device, p.channel_blocks)
            _launch(_backward_sums, p.grid,
                    (*ptrs, dweight, dbias, partial, sums, counter, *geometry_, *chunking, param), p.config,
                    WRITE_DX=not training, KB=p.merge_rows, **flags, **layout)
            if training:
                _launch(_backward_apply, p.grid, (*ptrs, sums, *geometry_, *chunking, param), p.config,
                        **flags, **layout)
    if work is not dx:
        dx.copy_(work)
        if residual_grad:
            dres.copy_(dres_work)
    return dx, dweight, dbias, dres
