"""Host time of a training step on the Triton path, its kernel launches stubbed, against torch's step.

The GPU kernels' speed is bench_gpu.py's business; this measures what the CPU spends to
get them launched: the layer, the dispatch, the autograd Function, planning and the
allocations, every time a step runs. A kernel that takes a few microseconds on the GPU
is wasted when the host needs much longer to issue it.

How, on a machine without a GPU: the Triton kernels' launch (``triton_bn._launch``) is
replaced by a no-op and the step runs on CPU tensors (``TRITON_INTERPRET=1`` lets them
through the kernels' checks; nothing is interpreted, since nothing is launched). In the
same process it times ``torch.nn.BatchNorm2d``'s training step on the same CPU tensors,
its computation included (torch's CPU kernel: the work a GPU launch would replace), so
the ratio is normlab's host time over torch's whole step: a bound on the overhead, not
a GPU measurement. Each step is a forward and a backward (``x.grad = None``,
``layer(x).backward(dy)``); medians over interleaved rounds.

    python benchmarks/bench_host.py            # a few shapes, NCHW and channels-last
    python benchmarks/bench_host.py --quick    # fewer rounds

Target: at most 1.5x torch's step (docs/performance.md has the figures).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: CPU tensors pass the kernels' checks

import torch  # noqa: E402
from _timing import geomean, median_times  # noqa: E402

import normlab  # noqa: E402

SHAPES = [(8, 64, 8, 8), (32, 64, 8, 8), (32, 256, 4, 4)]
TARGET = 1.5


def stub_launches():
    """Replace the one place the kernels are launched by a no-op; returns the call counter."""
    from normlab.kernels import triton_bn

    calls = []
    triton_bn._launch = lambda kernel, grid, args, config, **constexprs: calls.append(kernel)
    return calls


def steps(shape, channels_last: bool):
    """(torch's step, normlab's layer step on the triton backend, the op alone) on the same tensors."""
    from normlab.kernels import triton_ops

    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=gen).to(memory_format=fmt).requires_grad_()
    dy = torch.randn(shape, generator=gen).to(memory_format=fmt)
    C = shape[1]
    theirs, ours = torch.nn.BatchNorm2d(C), normlab.BatchNorm2d(C)
    weight, bias = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
    rm, rv = torch.zeros(C), torch.ones(C)

    def torch_step():
        x.grad = None
        theirs(x).backward(dy)

    def layer_step():
        x.grad = None
        with normlab.use_backend("triton"):
            ours(x).backward(dy)

    def op_step():
        x.grad = None
        triton_ops.batch_norm_act(x, weight, bias, None, rm, rv, True, 0.1, 1e-5, "identity", 0.0, False).backward(dy)

    return torch_step, layer_step, op_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 20 ms")
    args = parser.parse_args(argv)
    rounds, min_time = (3, 0.02) if args.quick else (9, 0.2)
    torch.set_num_threads(1)
    calls = stub_launches()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread; kernel launches "
          "stubbed, CPU tensors; torch.nn.BatchNorm2d's step computes, normlab's only plans and allocates")
    header = (f"{'shape':<20}{'layout':<15}{'torch us':>10}{'layer us':>10}{'layer/torch':>12}{'op us':>8}"
              f"{'op/torch':>10}")
    print(header)
    print("-" * len(header))
    ratios = []
    for shape in SHAPES:
        for channels_last in (False, True):
            torch_step, layer_step, op_step = steps(shape, channels_last)
            calls.clear()
            layer_step()
            if not calls:
                print(f"bench_host.py: the layer did not take the Triton path on {shape}", file=sys.stderr)
                return 1
            t = median_times({"torch": torch_step, "layer": layer_step, "op": op_step}, rounds, min_time)
            ratios.append(t["layer"] / t["torch"])
            name = "channels_last" if channels_last else "NCHW"
            print(f"{str(shape):<20}{name:<15}{t['torch'] * 1e6:>10.0f}{t['layer'] * 1e6:>10.0f}"
                  f"{t['layer'] / t['torch']:>12.2f}{t['op'] * 1e6:>8.0f}{t['op'] / t['torch']:>10.2f}", flush=True)
    print("-" * len(header))
    worst = max(ratios)
    print(f"layer step / torch's: geomean {geomean(ratios):.2f}, worst {worst:.2f} "
          f"(target <= {TARGET}: {'met' if worst <= TARGET else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
