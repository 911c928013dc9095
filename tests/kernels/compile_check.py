"""Compile the Triton kernels for NVIDIA GPUs without one, and count the SASS of their main loops.

The interpreter that runs the kernel tests on the CPU is lenient where the compiler is
not (types of loop-carried values, constexpr branches, what may be a tensor); this
compiles kernel variants for sm_80 (A100) and sm_90 (H100, H200) down to cubin so that
such errors show without a GPU. Run by tests/kernels/test_triton_compiles.py in a fresh
process (the kernels must not be decorated for the interpreter there), or by hand:

    python tests/kernels/compile_check.py          # representative variants, then the SASS table
    python tests/kernels/compile_check.py --all    # every specialization the launchers use
    python tests/kernels/compile_check.py --sass   # the SASS table alone

The SASS table: for the shapes of the benchmark, each split kernel is specialized as the
launcher would specialize it (the plan's constexprs; integer arguments equal to 1 become
constants, multiples of 16 are marked divisible, as Triton's launcher does), compiled for
sm_90 with the first autotuning configuration, and disassembled with the nvdisasm that
Triton ships. Its main loop (the first loop in the code that loads from global memory:
the loop over full tiles) is counted: instructions per iteration, divided by the
elements each thread handles per iteration (counting only the columns that hold data),
and the width of its loads. These are compile-time counts, not timings. The check fails
when a 16-bit statistics or apply loop needs more than MAX_PER_ELEMENT instructions.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from normlab.kernels import triton_bn as T

MAX_PER_ELEMENT = 15  # memory speed leaves room for about this many on an H100 or H200 at 16 bits
FLOATS = {"eps", "momentum", "param"}
IO = {"x", "y", "residual", "dy", "saved", "dx", "dres"}  # tensors in x's dtype
PARAMS = {"weight", "bias", "running_mean", "running_var", "new_running_mean", "new_running_var", "dweight", "dbias"}
TL = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def compile_one(fn, xdt: str, acc, constexprs: dict, capability: int, ints: dict | None = None, num_warps=4,
                num_stages=3):
    """triton.compile of ``fn`` for one GPU; ``ints`` gives integer arguments' values (else: unknown, i32)."""
    ints = ints or {}
    signature, attrs, values = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name in FLOATS:
            signature[name] = "fp32"
            continue
        if name in IO:
            signature[name] = f"*{xdt}"
        elif name in PARAMS:
            signature[name] = "*fp32"
        elif name == "counter":
            signature[name] = "*i32"
        elif name.islower() and not name.startswith("stride"):
            signature[name] = f"*{'fp64' if acc == tl.float64 else 'fp32'}"
        elif ints.get(name) == 1:  # the launcher makes integers equal to 1 constants
            signature[name] = "constexpr"
            values[name] = 1
            continue
        else:
            signature[name] = "i32"
            if name in ints and ints[name] % 16:
                continue
        attrs[(i,)] = [["tt.divisibility", 16]]  # pointers (aligned allocations) and multiples of 16
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=values, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def variants(everything: bool):
    """(kernel, x dtype, accumulation dtype, constexprs) covering the launchers' specializations."""
    dtypes = [("fp16", tl.float32), ("bf16", tl.float32), ("fp32", tl.float32), ("fp64", tl.float64)]
    picks = {"fp16": ("relu", "leaky_relu"), "bf16": ("elu",), "fp32": ("silu", "sigmoid"), "fp64": ("identity",)}
    for (xdt, acc), activation in itertools.product(dtypes, T.ACTIVATIONS):
        if not everything and activation not in picks[xdt]:
            continue
        flags = itertools.product((True, False), repeat=4) if everything else [(xdt != "bf16",) * 4]
        for channels_last, affine, residual, training in flags:
            masked = not residual  # the column mask, and 64-bit offsets, on alternate variants
            layout = dict(CHANNELS_LAST=channels_last, CPB=16 if channels_last else 1, BLOCK_B=16, B_T=1 + (
                not channels_last), ALIGN=4, MASK_B=masked, EVEN_B=channels_last or not masked,
                IDX=tl.int64 if masked else tl.int32, ELT=8 if xdt == "fp64" else 4 if xdt == "fp32" else 2)
            tuned = dict(TILE_BYTES=T.MIN_TILE_BYTES, STAGES=2)
            base = dict(HAS_WEIGHT=affine, HAS_BIAS=affine, HAS_RESIDUAL=residual, ACTIVATION=activation, ACC=acc)
            shifted = xdt in ("fp32", "fp64")
            if training:
                yield T._forward_on_chip, xdt, acc, dict(
                    base, HAS_RUNNING=residual, SKIP_NON_FINITE=affine, SHIFTED=shifted, CHANNELS_LAST=channels_last,
                    CPB=layout["CPB"],
                    ALIGN=4, IDX=layout["IDX"], BLOCK_A=16, BLOCK_B=16)
                yield T._forward_statistics, xdt, acc, dict(layout, **tuned, HAS_RUNNING=residual, SHIFTED=shifted,
                                                            SKIP_NON_FINITE=affine, ACC=acc, KB=8)
            yield T._forward_apply, xdt, acc, dict(base, **layout, **tuned, TRAINING=training, SHIFTED=shifted)
            for from_output in (False, True):
                if from_output and (activation not in T.INVERTIBLE or residual):
                    continue
                b = dict(base, RESIDUAL_GRAD=residual, FROM_OUTPUT=from_output,
                         SHIFTED=training and not from_output and shifted)
                yield T._backward_on_chip, xdt, acc, dict(
                    b, TRAINING=training, CHANNELS_LAST=channels_last, CPB=layout["CPB"], ALIGN=4,
                    IDX=layout["IDX"], BLOCK_A=16, BLOCK_B=16)
                yield T._backward_sums, xdt, acc, dict(b, **layout, **tuned, WRITE_DX=not training, KB=8)
                if training:
                    yield T._backward_apply, xdt, acc, dict(b, **layout, **tuned)


# --- SASS: instructions per element of the main loops -------------------------------------

# (name, shape, layout): the benchmark's shapes whose loops differ (tile width, alignment)
SASS_CASES = [
    ("56x56", (32, 256, 56, 56), "channels_first"),
    ("28x28", (32, 512, 28, 28), "channels_first"),
    ("14x14", (32, 1024, 14, 14), "channels_first"),
    ("7x7, batch 256", (256, 2048, 7, 7), "channels_first"),
    ("56x56", (32, 256, 56, 56), "channels_last"),
    ("BatchNorm1d", (100000, 32), "channels_last"),
]
LOOP_KERNELS = {"statistics": T._forward_statistics, "apply": T._forward_apply,
                "backward sums": T._backward_sums, "backward apply": T._backward_apply}
LOAD = re.compile(r"\b(?:LDG|LDGSTS)(?:\.[A-Z0-9_]+)*(?=\s)")  # loads from global memory (LDGSTS: cp.async)
WIDTH = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}  # bytes a thread loads; 4 by default


def load_width(opcode: str) -> int:
    return next((WIDTH[m] for m in opcode.split(".")[1:] if m in WIDTH), 4)


def _nvdisasm() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")


def main_loop(lines: list[tuple[int, str]], labels: dict[str, int]) -> list[str]:
    """The instructions of the first loop (a backward branch) whose body loads from global memory."""
    for end, (address, instruction) in enumerate(lines):
        m = re.search(r"BRA\s+(?:`\()?(\.L_x_\d+)", instruction)
        if not m:
            continue
        target = labels.get(m.group(1))
        if target is None or target > address:
            continue
        body = [ins for a, ins in lines[:end + 1] if a >= target]
        if any(LOAD.search(ins) for ins in body):
            return body
    raise ValueError("no loop that loads from global memory")


def sass(cubin: bytes) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """(address, instruction) of a cubin's code and the addresses of its labels, from Triton's nvdisasm."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([_nvdisasm(), "-c", path], capture_output=True, text=True, check=True).stdout
    lines, labels, pending = [], {}, []
    for line in text.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            address = int(m.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            lines.append((address, m.group(2).strip()))
    return lines, labels


def loop_report(shape, layout: str, dtype: torch.dtype, kernel_name: str):
    """(instructions per element, load widths in bytes, whether loads are asynchronous copies) of one main loop."""
    x = torch.empty(shape, dtype=dtype, device="meta")
    if layout == "channels_last" and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    p = T.plan(x, on_chip=False, programs=2 * 4 * 132)
    tile, warps, stages = T.CONFIGS[0]
    acc = tl.float32
    layout_constexprs = T._layout_constexprs(p, x.element_size())
    flags = dict(HAS_WEIGHT=True, HAS_BIAS=True, HAS_RESIDUAL=False, ACTIVATION="identity", ACC=acc)
    shifted = T._shifted(dtype)
    backward = dict(flags, RESIDUAL_GRAD=False, FROM_OUTPUT=False, SHIFTED=shifted)
    constexprs = {
        "statistics": dict(layout_constexprs, HAS_RUNNING=True, SKIP_NON_FINITE=True, SHIFTED=shifted, ACC=acc,
                           KB=p.merge_rows),
        "apply": dict(flags, **layout_constexprs, TRAINING=True, SHIFTED=shifted),
        "backward sums": dict(backward, **layout_constexprs, WRITE_DX=False, KB=p.merge_rows),
        "backward apply": dict(backward, **layout_constexprs),
    }[kernel_name]
    constexprs.update(TILE_BYTES=tile, STAGES=stages)
    ints = dict(A=p.A, B=p.B, C=p.C, stride_a=p.stride_a, stride_c=p.stride_c, CHUNK_A=p.chunk_a,
                B_CHUNKS=p.b_chunks, N_CHUNKS=p.n_chunks)
    kernel = compile_one(LOOP_KERNELS[kernel_name], TL[dtype], acc, constexprs, 90, ints, warps, stages)
    lines, labels = sass(kernel.asm["cubin"])
    body = main_loop(lines, labels)
    block_a = tile // (x.element_size() * p.block_b)
    columns = min(p.block_b, p.B) if not p.channels_last else p.block_b
    per_thread = block_a * columns / (32 * warps)
    widths = sorted({load_width(m.group(0)) for ins in body if (m := LOAD.search(ins))})
    asynchronous = any("LDGSTS" in ins for ins in body)
    return len(body) / per_thread, widths, asynchronous


def sass_table() -> tuple[list[str], list[str]]:
    """The table's lines, and the 16-bit statistics and apply loops over MAX_PER_ELEMENT."""
    rows = ["| loop | shape | dtype | SASS instructions per element | loads (bytes each) | cp.async |",
            "|---|---|---|---|---|---|"]
    over = []
    for (name, shape, layout), dtype in itertools.product(SASS_CASES, (torch.float16, torch.bfloat16, torch.float32)):
        if dtype != torch.float16 and (name, layout) != ("56x56", "channels_first"):
            continue  # the other dtypes on one shape: their loops differ from float16's in the conversions only
        for kernel_name in LOOP_KERNELS:
            per_element, widths, asynchronous = loop_report(shape, layout, dtype, kernel_name)
            where = f"{name} {shape}" + (", NHWC" if layout == "channels_last" and len(shape) == 4 else "")
            rows.append(f"| {kernel_name} | {where} | {TL[dtype]} | {per_element:.1f} | "
                        f"{', '.join(map(str, widths))} | {'yes' if asynchronous else 'no'} |")
            if dtype != torch.float32 and kernel_name in ("statistics", "apply") and per_element > MAX_PER_ELEMENT:
                over.append(rows[-1])
    return rows, over


def main(argv):
    if T.INTERPRETED:
        sys.exit("compile_check.py: unset TRITON_INTERPRET: the kernels are decorated for the interpreter")
    if "--sass" not in argv:
        count, kernels = 0, set()
        everything = "--all" in argv
        for fn, xdt, acc, constexprs in variants(everything):
            for capability in (80, 90) if everything or xdt == "fp16" else (90,):  # sm_80: one dtype, by default
                compile_one(fn, xdt, acc, constexprs, capability, num_stages=constexprs.get("STAGES", 3))
                count += 1
            kernels.add(fn.__name__)
        print(f"compiled {count} variants of {len(kernels)} kernels for sm_80 and sm_90")
    rows, over = sass_table()
    print(f"main loops on sm_90, triton {triton.__version__} (first configuration: {T.CONFIGS[0][0]}-byte tiles, "
          f"{T.CONFIGS[0][1]} warps, {T.CONFIGS[0][2]} stages):")
    print("\n".join(rows))
    if over:
        sys.exit(f"16-bit main loops over {MAX_PER_ELEMENT} instructions per element:\n" + "\n".join(over))


if __name__ == "__main__":
    main(sys.argv[1:])
