"""The lab's throughput on the CPU: the vectorized runner against separate runs, and normlab's layers against torch's.

For each kind of run the quick profile trains, it times, on one thread:
    separate   one run by the plain loop (``normlab.lab.train.train_separately``: one nn.Module)
    group K    K runs as one stacked model (``normlab.lab.train.train_group``), K = 1, 3, 10, 20
and prints member-steps per second and the ratio to separate (above 1: the lab trains faster).
The kinds: the faster-training MLP (3x100 sigmoid, BN, batch 60), the small-batches MLP at
batch 2, the recurrent GRU (32 units, BN per step), the bn-only-training CNN (3 blocks of
32 channels) and the saturating-activations CNN (5 blocks of 60 channels). Whole runs, as
the lab trains them: building the models, the evaluations on the test set, everything.

Then the faster-training MLP once more with torch.nn.BatchNorm1d in place of normlab's,
separate and in the largest group (20; 3 with --quick), the two layers' rounds interleaved:
the ratio normlab / torch is what normlab's layer costs inside a lab run (above 1:
normlab's is slower).

Each figure is the median over interleaved rounds (benchmarks/_timing.py). State the
machine and its load with any figure you quote.

    python benchmarks/bench_lab_throughput.py            # a few minutes on one core
    python benchmarks/bench_lab_throughput.py --quick    # short runs in groups of 1 and 3, the MLPs: a minute
    python benchmarks/bench_lab_throughput.py --kinds CNN  # only the kinds whose name holds "CNN", then the comparison
    python benchmarks/bench_lab_throughput.py --kinds      # only the comparison with torch's layer
"""

from __future__ import annotations

import argparse

import torch
from _timing import median_times
from torch import nn

from normlab.lab import data, models, train
from normlab.lab.fingerprint import fingerprint
from normlab.lab.models import ModelSpec
from normlab.lab.train import RunConfig

GROUPS = (1, 3, 10, 20)


def kinds(quick: bool) -> dict[str, RunConfig]:
    def steps(n):
        return max(4, n // 20) if quick else n

    return {
        "faster-training MLP": RunConfig(ModelSpec("mlp", 3, 100, "sigmoid", "bn"), lr=1.0, steps=steps(300), eval_every=100),
        "small-batches MLP, batch 2": RunConfig(
            ModelSpec("mlp", 3, 100, "relu", "bn"), lr=0.05 / 16, momentum=0.9, batch_size=2, steps=steps(300), eval_every=300, train_subset=1000
        ),
        "recurrent GRU, BN per step": RunConfig(
            ModelSpec("rnn", 1, 32, "tanh", "bn_step"), optimizer="adam", lr=3e-3, batch_size=64, steps=steps(40), eval_every=100
        ),
        "bn-only CNN": RunConfig(
            ModelSpec("cnn", 3, 32, "relu", "bn", final_width=32), optimizer="adam", lr=1e-2, steps=steps(60), eval_every=100, trainable="norm"
        ),
        "saturating CNN": RunConfig(
            ModelSpec("cnn", 5, 60, "sigmoid", "bn", dropout=0.15, final_width=100), optimizer="adam", lr=1e-3, batch_size=64, steps=steps(10), eval_every=50
        ),
    }


def with_torch_batch_norm(run):
    """``run`` with the lab's "bn" built from torch.nn's BatchNorm classes instead of normlab's."""

    def wrapped():
        saved = models.NORMS["bn"]
        models.NORMS["bn"] = lambda c, s: (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[s](c)
        try:
            return run()
        finally:
            models.NORMS["bn"] = saved

    return wrapped


def runners(config: RunConfig, ds, sizes) -> dict:
    out = {"separate": lambda: train.train_separately(config, ds)}
    for k in sizes:
        out[f"group {k}"] = lambda k=k: train.train_group([config.but(seed=s) for s in range(k)], ds)
    return out


def member_steps(name: str, seconds: float, steps: int) -> float:
    k = 1 if name == "separate" else int(name.split()[1])
    return k * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: checks that the script works, in seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.0, help="seconds each runner is repeated for per round")
    parser.add_argument("--kinds", nargs="*", metavar="TEXT",
                        help="only the kinds of run whose name contains one of these (none given: only the comparison with torch's layer)")
    args = parser.parse_args()
    every = kinds(args.quick)
    if args.quick:  # a check that the script works: the convolutions and recurrences take minutes even so
        every = {k: v for k, v in every.items() if "MLP" in k}
    if args.kinds is not None:
        every = {k: v for k, v in every.items() if any(t.lower() in k.lower() for t in args.kinds)}
        if args.kinds and not every:
            parser.error(f"--kinds: none of {', '.join(map(repr, args.kinds))} is in a kind's name ({'; '.join(kinds(False))})")
    torch.set_num_threads(1)
    ds = data.load("mnist1d")
    print(f"# {fingerprint()['cpu']}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), one thread; member-steps per second (ratio to separate)")
    groups = (1, 3) if args.quick else GROUPS
    if every:
        print(f"{'kind of run':<30}{'separate':>12}" + "".join(f"{'group ' + str(k):>18}" for k in groups), flush=True)
    for label, config in every.items():
        times = median_times(runners(config, ds, groups), args.rounds, args.min_time)
        base = member_steps("separate", times["separate"], config.steps)
        cells = [f"{member_steps(n, t, config.steps) / base:>10.2f}x ({member_steps(n, t, config.steps):>4.0f})" for n, t in times.items() if n != "separate"]
        print(f"{label:<30}{base:>12.0f}" + "".join(f"{c:>18}" for c in cells), flush=True)
    config = kinds(args.quick)["faster-training MLP"]
    ours = runners(config, ds, (groups[-1],))
    # both layers in one call of median_times, so that their rounds interleave and share the machine's load
    times = median_times({**{("normlab", n): r for n, r in ours.items()}, **{("torch", n): with_torch_batch_norm(r) for n, r in ours.items()}},
                         args.rounds, args.min_time)
    print("\n# the faster-training MLP with normlab.nn.BatchNorm1d against torch.nn.BatchNorm1d: time ratio normlab / torch")
    for name in ours:
        print(f"{name:<12}{times['normlab', name] / times['torch', name]:>8.3f}")


if __name__ == "__main__":
    main()
