"""Compile the Triton kernels for NVIDIA GPUs without one: Triton source -> TTIR -> PTX -> cubin.

The interpreter that runs the kernel tests on the CPU is lenient where the compiler is
not (types of loop-carried values, constexpr branches, what may be a tensor); this
compiles kernel variants for sm_80 (A100) and sm_90 (H100) so that such errors show
without a GPU. Run by tests/kernels/test_triton_compiles.py in a fresh process (the
kernels must not be decorated for the interpreter there), or by hand:

    python tests/kernels/compile_check.py          # a representative subset
    python tests/kernels/compile_check.py --all    # every specialization the launchers use
"""

import itertools
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from normlab.kernels import triton_bn as T

FLOATS = ("eps", "momentum", "param")
IO = {"x", "y", "residual", "dy", "saved", "dx", "dres"}  # tensors in x's dtype; the rest float32/64
PARAMS = {"weight", "bias", "running_mean", "running_var", "new_running_mean", "new_running_var", "dweight", "dbias"}


def compile_one(fn, xdt, acc, constexprs, capability):
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in FLOATS:
            signature[name] = "fp32"
        elif name in IO:
            signature[name] = f"*{xdt}"
        elif name in PARAMS:
            signature[name] = "*fp32"
        elif name.islower() and not name.startswith("stride"):
            signature[name] = f"*{acc}"
        else:
            signature[name] = "i32"
        if signature[name] != "constexpr" and signature[name] != "fp32":
            attrs[(i,)] = [["tt.divisibility", 16]]  # as the launcher's specialization gives for round sizes
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})


def variants(everything: bool):
    dtypes = [("fp16", tl.float32), ("bf16", tl.float32), ("fp32", tl.float32), ("fp64", tl.float64)]
    for (xdt, acc), activation in itertools.product(dtypes, T.ACTIVATIONS):
        flags = itertools.product((True, False), repeat=4) if everything else [(xdt != "bf16",) * 4]
        if not everything and activation not in {"fp16": ("relu", "leaky_relu"), "bf16": ("elu",),
                                                  "fp32": ("silu", "sigmoid"), "fp64": ("identity",)}[xdt]:
            continue
        for evenly, affine, residual, training in flags:
            base = dict(HAS_WEIGHT=affine, HAS_BIAS=affine, HAS_RESIDUAL=residual, EVENLY=evenly,
                        ACTIVATION=activation, ACC=acc, BLOCK_R=64, BLOCK_C=2)
            if training:
                yield T._forward_on_chip, xdt, acc, dict(base, HAS_RUNNING=residual)
                yield T._forward_partial_statistics, xdt, acc, dict(EVENLY=evenly, ACC=acc, BLOCK_R=64, BLOCK_C=2)
            yield T._forward_apply, xdt, acc, dict(base, TRAINING=training, HAS_RUNNING=residual, CHUNKS_P2=8)
            for from_output in (False, True):
                if from_output and (activation not in T.INVERTIBLE or residual):
                    continue
                b = dict(base, FROM_OUTPUT=from_output, SHIFTED=training and not from_output)
                yield T._backward_on_chip, xdt, acc, dict(b, TRAINING=training, RESIDUAL_GRAD=residual)
                yield T._backward_partial_sums, xdt, acc, b
                yield T._backward_apply, xdt, acc, dict(b, TRAINING=training, RESIDUAL_GRAD=residual, CHUNKS_P2=8)


def main(argv):
    everything = "--all" in argv
    if T.INTERPRETED:
        sys.exit("compile_check.py: unset TRITON_INTERPRET: the kernels are decorated for the interpreter")
    count = 0
    kernels = set()
    for fn, xdt, acc, constexprs in variants(everything):
        for capability in (80, 90):
            compile_one(fn, xdt, acc, constexprs, capability)
            count += 1
        kernels.add(fn.__name__)
    print(f"compiled {count} variants of {len(kernels)} kernels for sm_80 and sm_90")


if __name__ == "__main__":
    main(sys.argv[1:])
