"""Layer, group, instance, RMS and weight norm on the CPU: normlab against torch, same tensors, same process.

For each layer and shape it times training forward+backward and inference forward of
    torch    the torch.nn module (LayerNorm, GroupNorm, InstanceNorm2d, RMSNorm), or a Linear
             under torch.nn.utils.parametrizations.weight_norm
    default  the normlab module with the automatic backend choice
    own      the normlab module forced onto normlab's own implementation
and prints the time ratio against torch (below 1 is faster) and the geometric means,
per layer and over all. Each of normlab's two is timed head to head with torch, in
interleaved rounds so that drift in the machine hits both alike; each figure is the
median over rounds (see benchmarks/_timing.py).

    python benchmarks/bench_norms.py            # transformer and convnet shapes, float32
    python benchmarks/bench_norms.py --quick    # small shapes, seconds
"""

from __future__ import annotations

import argparse
import platform

import torch

import normlab
from _timing import against, geomean, make_step

# (layer, build(namespace, shape): the layer from torch.nn or normlab for that input, shapes, quick shapes)
CASES = [
    ("LayerNorm", lambda nn, s: nn.LayerNorm(s[-1]), [(32, 128, 768), (8, 512, 1024)], [(4, 16, 64)]),
    ("RMSNorm", lambda nn, s: nn.RMSNorm(s[-1]), [(32, 128, 768), (8, 256, 4096)], [(4, 16, 64)]),
    ("GroupNorm", lambda nn, s: nn.GroupNorm(32, s[1]), [(32, 256, 28, 28), (8, 512, 32, 32)], [(4, 64, 4, 4)]),
    ("InstanceNorm2d", lambda nn, s: nn.InstanceNorm2d(s[1], affine=True), [(16, 64, 128, 128), (16, 256, 32, 32)],
     [(4, 16, 8, 8)]),
    # a weight-normalized Linear (width x width) on a (batch, width) input: the matmul included
    ("WeightNorm", lambda nn, s: weight_norm(nn)(torch.nn.Linear(s[-1], s[-1])), [(256, 1024), (32, 4096)], [(8, 32)]),
]


def weight_norm(namespace):
    return normlab.weight_norm if namespace is normlab else torch.nn.utils.parametrizations.weight_norm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    parser.add_argument("--rounds", type=int, help="default 7, or 3 with --quick")
    parser.add_argument("--min-time", type=float, help="seconds per round per runner; default 0.2, or less with --quick")
    args = parser.parse_args(argv)
    rounds, min_time = (3, 0.01) if args.quick else (7, 0.2)
    rounds, min_time = args.rounds or rounds, args.min_time if args.min_time is not None else min_time

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, float32")
    header = f"{'layer':<16}{'shape':<20}{'mode':<7}{'torch ms':>10}{'default/torch':>15}{'own/torch':>11}"
    print(header)
    print("-" * len(header))
    ratios = {}  # (layer, mode, impl) -> ratios
    for name, build, shapes, quick_shapes in CASES:
        for shape in quick_shapes if args.quick else shapes:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=gen).requires_grad_()
            dy = torch.randn(shape, generator=gen)
            ref, ours = build(torch.nn, shape), build(normlab, shape)
            ours.load_state_dict(ref.state_dict())
            for mode in ("train", "eval"):
                train = mode == "train"
                ref.train(train), ours.train(train)
                torch_s, r = against(
                    make_step(ref, x, dy, None, train),
                    {"default": make_step(ours, x, dy, None, train), "own": make_step(ours, x, dy, "normlab", train)},
                    rounds,
                    min_time,
                )
                ratios.setdefault((name, mode, "default"), []).append(r["default"])
                ratios.setdefault((name, mode, "own"), []).append(r["own"])
                print(f"{name:<16}{str(shape):<20}{mode:<7}{torch_s * 1e3:>10.3f}{r['default']:>15.3f}{r['own']:>11.3f}")
    print("-" * len(header))
    layers = list(dict.fromkeys(name for name, *_ in CASES))
    for mode in ("train", "eval"):
        label = "train fwd+bwd" if mode == "train" else "eval fwd"
        for name in layers:
            d, o = ratios[(name, mode, "default")], ratios[(name, mode, "own")]
            print(f"geomean {name:<16}{label:<29}{geomean(d):>15.3f}{geomean(o):>11.3f}")
        everything = [r for (_, m, impl), rs in ratios.items() if m == mode and impl == "default" for r in rs]
        own = [r for (_, m, impl), rs in ratios.items() if m == mode and impl == "own" for r in rs]
        print(f"geomean {'all':<16}{label:<29}{geomean(everything):>15.3f}{geomean(own):>11.3f}")


if __name__ == "__main__":
    main()
