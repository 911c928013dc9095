"""Folding batch norm for inference: eval latency of a folded ResNet against the unfolded one, on the CPU.

The model is ResNet-18 in its CIFAR form (3x3 stem, four stages of two basic blocks,
32x32 input), with torch.nn.BatchNorm2d or normlab.BatchNorm2d. For each batch size
it times the forward pass under ``torch.inference_mode()`` of
    unfolded  the model in eval mode, batch norms in place
    folded    normlab.fold_batchnorm(model).model: every batch norm folded into its conv
and prints the time ratio folded / unfolded (below 1: folding is faster). Rounds
interleave the runners, each figure is the median over rounds (see benchmarks/_timing.py).

    python benchmarks/bench_fold.py            # ResNet-18 width 64, batches 1 and 32
    python benchmarks/bench_fold.py --quick    # width 8, small input, seconds
"""

from __future__ import annotations

import argparse
import platform

import torch
from _timing import geomean, median_times
from torch import nn

import normlab


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(width: int, norm, classes: int = 10) -> nn.Module:
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), norm(width), nn.ReLU()]
    cin = width
    for i, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2**i
        layers += [BasicBlock(cin, cout, stride, norm), BasicBlock(cout, cout, 1, norm)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def trained_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few training-mode passes so the running statistics are those of real activations, not 0 and 1."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a narrow network on small inputs, a few seconds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per round per runner")
    args = parser.parse_args(argv)
    width, size, batches = (8, 16, (2,)) if args.quick else (64, 32, (1, 32))
    rounds, min_time = (3, 0.02) if args.quick else (args.rounds, args.min_time)

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, float32")
    print(f"ResNet-18 (CIFAR form), width {width}, input {size}x{size}")
    header = f"{'batch norm':<14}{'batch':>6}{'unfolded ms':>13}{'folded ms':>11}{'folded / unfolded':>19}{'max rel err':>13}"
    print(header)
    print("-" * len(header))
    ratios = []
    for label, norm in (("torch", nn.BatchNorm2d), ("normlab", normlab.BatchNorm2d)):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        model = trained_statistics(resnet18(width, norm), torch.randn(8, 3, size, size, generator=gen))
        folded = normlab.fold_batchnorm(model).model
        for batch in batches:
            x = torch.randn(batch, 3, size, size, generator=gen)
            with torch.inference_mode():
                want, got = model(x), folded(x)
            err = ((got - want).abs().max() / want.abs().max()).item()

            def run(m):
                def call():
                    with torch.inference_mode():
                        m(x)

                return call

            times = median_times({"unfolded": run(model), "folded": run(folded)}, rounds, min_time)
            ratio = times["folded"] / times["unfolded"]
            ratios.append(ratio)
            print(
                f"{label:<14}{batch:>6}{times['unfolded'] * 1e3:>13.3f}{times['folded'] * 1e3:>11.3f}"
                f"{ratio:>19.3f}{err:>13.1e}"
            )
    print("-" * len(header))
    print(f"geomean folded / unfolded{'':>20}{geomean(ratios):>19.3f}")


if __name__ == "__main__":
    main()
