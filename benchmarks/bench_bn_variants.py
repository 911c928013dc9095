"""Batch-norm variants on the CPU: normlab's BatchRenorm2d and GhostBatchNorm against
torch.nn.BatchNorm2d, same tensors, same process.

For each shape it times training forward+backward and inference forward of
    torch     torch.nn.BatchNorm2d
    renorm    normlab.BatchRenorm2d past its schedule (rmax=3, dmax=5 in force): the batch
              statistics taken first (normlab's shifted two-pass, for r and d), then batch
              norm with weight gamma * r and bias gamma * d + beta on the default backend
    warm-up   normlab.BatchRenorm2d in its warm-up steps, where it is batch norm and runs
              as such (torch's kernel on the CPU)
    ghost     normlab.GhostBatchNorm with virtual batches of 8 (4 per batch of 32)
    frozen    normlab.FrozenBatchNorm: fixed statistics and affine in training too, so its
              training step is an inference forward plus the input's gradient; against
              torch's training step it shows what freezing a layer saves
and prints the time ratio against torch (below 1 is faster) and the geometric means.
In inference every variant is batch norm with running statistics. Each variant is
timed head to head with torch, in interleaved rounds; each figure is the median over
rounds (see benchmarks/_timing.py).

    python benchmarks/bench_bn_variants.py            # ResNet-50 stage shapes at batch 32
    python benchmarks/bench_bn_variants.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import platform

import torch

import normlab
from _timing import against, geomean, make_step
from bench_batchnorm import QUICK, RESNET50_BATCH32

VIRTUAL_BATCH = 8


def layers(channels: int) -> dict:
    renorm = normlab.BatchRenorm2d(channels, warmup_steps=0, rmax_full_at=0, dmax_full_at=0)
    with torch.no_grad():  # running statistics away from the batch's, so that r and d do something
        renorm.running_mean.fill_(0.3)
        renorm.running_var.fill_(2.0)
    return {
        "torch": torch.nn.BatchNorm2d(channels),
        "renorm": renorm,
        "warm-up": normlab.BatchRenorm2d(channels, warmup_steps=10**9),
        "ghost": normlab.GhostBatchNorm(channels, virtual_batch_size=VIRTUAL_BATCH),
        "frozen": normlab.FrozenBatchNorm(channels),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per round per runner")
    args = parser.parse_args(argv)
    shapes = QUICK if args.quick else RESNET50_BATCH32
    rounds, min_time = (3, 0.02) if args.quick else (args.rounds, args.min_time)
    variants = ["renorm", "warm-up", "ghost", "frozen"]

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, float32, NCHW")
    header = f"{'shape':<22}{'mode':<8}{'torch ms':>10}" + "".join(f"{v + '/torch':>15}" for v in variants)
    print(header)
    print("-" * len(header))
    ratios = {(mode, v): [] for mode in ("train", "eval") for v in variants}
    for shape in shapes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).requires_grad_()
        dy = torch.randn(shape, generator=gen)
        runners = layers(shape[1])
        for mode in ("train", "eval"):
            train = mode == "train"
            for layer in runners.values():
                layer.train(train)
            steps = {name: make_step(layer, x, dy, None, train) for name, layer in runners.items()}
            torch_s, r = against(steps.pop("torch"), steps, rounds, min_time)
            row = f"{str(shape):<22}{mode:<8}{torch_s * 1e3:>10.3f}"
            for v in variants:
                ratios[(mode, v)].append(r[v])
                row += f"{r[v]:>15.3f}"
            print(row)
    print("-" * len(header))
    for mode in ("train", "eval"):
        label = "train fwd+bwd" if mode == "train" else "eval fwd"
        print(f"geomean {label:<32}" + "".join(f"{geomean(ratios[(mode, v)]):>15.3f}" for v in variants))


if __name__ == "__main__":
    main()
