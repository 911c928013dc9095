"""Batch norm on the CPU: normlab against torch.nn.BatchNorm2d, same tensors, same process.

For each shape and layout it times training forward+backward and inference forward of
    torch    torch.nn.BatchNorm2d
    default  normlab.BatchNorm2d with the automatic backend choice
    own      normlab.BatchNorm2d forced onto normlab's own implementation
and prints the time ratio against torch (below 1 is faster) and the geometric means; then,
in the same run, the small tensor (8, 16, 8, 8) in training (forward + backward), where
the fixed cost normlab adds per call (its checks, the guard on the running statistics)
weighs most.
Each of normlab's two is timed head to head with torch, in interleaved rounds so that
drift in the machine hits both alike; each figure is the median over rounds (see
benchmarks/_timing.py).

    python benchmarks/bench_batchnorm.py            # ResNet-50 stage shapes at batch 32
    python benchmarks/bench_batchnorm.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import platform

import torch

import normlab
from _timing import against, geomean, make_step

RESNET50_BATCH32 = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7)]
QUICK = [(8, 16, 16, 16), (8, 64, 8, 8)]
SMALL = (8, 16, 8, 8)  # the per-call overhead, timed apart: its target is a ratio, not a geometric mean


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument("--rounds", type=int, help="default 7, or 3 with --quick")
    parser.add_argument("--min-time", type=float, help="seconds per round per runner; default 0.2, or less with --quick")
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else RESNET50_BATCH32
    rounds, min_time = (3, 0.02) if args.quick else (7, 0.2)
    rounds, min_time = args.rounds or rounds, args.min_time if args.min_time is not None else min_time

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, float32")
    header = f"{'shape':<22}{'layout':<15}{'mode':<11}{'torch ms':>10}{'default/torch':>15}{'own/torch':>11}"
    print(header)
    print("-" * len(header))
    ratios = {(mode, impl): [] for mode in ("train", "eval") for impl in ("default", "own")}
    for shape in shapes:
        for layout in (torch.contiguous_format, torch.channels_last):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=gen).to(memory_format=layout).requires_grad_()
            dy = torch.randn(shape, generator=gen).to(memory_format=layout)
            ref, ours = torch.nn.BatchNorm2d(shape[1]), normlab.BatchNorm2d(shape[1])
            for mode in ("train", "eval"):
                train = mode == "train"
                ref.train(train), ours.train(train)
                torch_s, r = against(
                    make_step(ref, x, dy, None, train),
                    {"default": make_step(ours, x, dy, None, train), "own": make_step(ours, x, dy, "normlab", train)},
                    rounds,
                    min_time,
                )
                ratios[(mode, "default")].append(r["default"])
                ratios[(mode, "own")].append(r["own"])
                name = "channels_last" if layout is torch.channels_last else "NCHW"
                print(f"{str(shape):<22}{name:<15}{mode:<11}{torch_s * 1e3:>10.3f}{r['default']:>15.3f}{r['own']:>11.3f}")
    print("-" * len(header))
    for mode in ("train", "eval"):
        label = "train fwd+bwd" if mode == "train" else "eval fwd"
        print(
            f"geomean {label:<40}{geomean(ratios[(mode, 'default')]):>15.3f}{geomean(ratios[(mode, 'own')]):>11.3f}"
        )
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(SMALL, generator=gen).requires_grad_(), torch.randn(SMALL, generator=gen)
    ref, ours = torch.nn.BatchNorm2d(SMALL[1]), normlab.BatchNorm2d(SMALL[1])
    unguarded = normlab.BatchNorm2d(SMALL[1], non_finite="propagate")
    torch_s, r = against(make_step(ref, x, dy, None, True),
                         {"default": make_step(ours, x, dy, None, True),
                          "propagate": make_step(unguarded, x, dy, None, True)}, rounds, min_time)
    print(f"small tensor {SMALL} train fwd+bwd: torch {torch_s * 1e6:.1f} us, default/torch {r['default']:.3f} "
          f"(target <= 1.3), without the guard (non_finite='propagate') {r['propagate']:.3f}")


if __name__ == "__main__":
    main()
