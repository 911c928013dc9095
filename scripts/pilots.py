"""The pilots that chose the designs of init-robustness (its depth) and ghost-batches (its large batch).

Each trains on seeds from 5000 (disjoint from every reported run: the lab's seeds start at 0,
or 1000 with --seed-offset) and reads the validation split only, never the test split, as
docs/claims.md says of every choice made after a pilot. It prints one line per arm: the mean
and standard deviation over seeds of the final validation accuracy (a diverged run at chance).

    python scripts/pilots.py init-depth --seeds 5      # 6 and 10 layers, rates 0.03 to 3 (about 8 min on 2 cores)
    python scripts/pilots.py ghost-batch --seeds 30    # batches 256, 512 and 1024, BN and ghost BN (about 1 min)

Runs are cached under --out (default: pilots/), as `normlab reproduce` caches its own.
"""

from __future__ import annotations

import argparse
import math
import statistics

from normlab.lab.claims import Run, base, ghost_batches, init_robustness
from normlab.lab.models import ModelSpec
from normlab.lab.reproduce import default_jobs, run_all
from normlab.lab.train import RunConfig

FIRST_SEED = 5000


def configs(pilot: str, seeds: int) -> list[RunConfig]:
    """The pilot's runs: the claim's quick-profile setup, with the choice the pilot makes left open."""
    seeds = range(FIRST_SEED, FIRST_SEED + seeds)
    if pilot == "init-depth":
        return [
            RunConfig(ModelSpec("mlp", depth=depth, width=100, activation="relu", norm=norm, init=init), data="mnist1d",
                      optimizer="sgd", lr=lr, batch_size=60, steps=1000, eval_every=100, seed=s)
            for depth in (6, 10) for norm in init_robustness.NORMS for init in init_robustness.SCHEMES
            for lr in (0.03, 0.1, 0.3, 1.0, 3.0) for s in seeds
        ]
    small, samples = ghost_batches.SMALL, ghost_batches.TRAIN_SAMPLES
    return [  # at the small batch's rate 0.01, the one both reported seed sets chose on validation
        RunConfig(ModelSpec("mlp", depth=3, width=100, activation="relu", norm=norm), data="mnist1d", optimizer="sgd",
                  lr=0.01 * math.sqrt(large / small), momentum=0.9, batch_size=large, steps=25 * samples // large,
                  eval_every=max(1, 25 * samples // large // 10), seed=s, train_subset=samples)
        for large in (256, 512, 1024) for norm in ("bn", "ghost") for s in seeds
    ]


def validation(run: Run, pilot: str = "init-depth") -> float:
    """A run's final validation accuracy, read as the pilot's claim reads its test accuracy
    (init-robustness: a diverged run at chance)."""
    return init_robustness.final_accuracy(run, "val") if pilot == "init-depth" else base.accuracy(run, "val")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pilot", choices=["init-depth", "ghost-batch"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="pilots")
    parser.add_argument("--jobs", type=int, default=default_jobs())
    args = parser.parse_args(argv)
    runs = configs(args.pilot, args.seeds)
    results, _, failed = run_all(runs, args.out, args.jobs, True, args.pilot)
    arms: dict = {}  # (depth, norm, init, lr, batch) -> its runs
    for c in runs:
        if c.key() in results:
            arm = (c.model.depth, c.model.norm, c.model.init, c.lr, c.batch_size)
            arms.setdefault(arm, []).append(Run(c, results[c.key()]))
    print("depth  norm   init    lr       batch  validation accuracy (mean ± std, n)")
    for (depth, norm, init, lr, batch), rs in sorted(arms.items()):
        v = [validation(r, args.pilot) for r in rs]
        print(f"{depth:<6} {norm:<6} {init:<7} {lr:<8.4g} {batch:<6} {statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}, {len(v)}")
    print(sensitivities(arms) if args.pilot == "init-depth" else gains(arms))
    if failed:
        print(f"{len(failed)} runs failed")


def gains(arms: dict) -> str:
    """Per large batch, what ghost BN adds to BN's validation accuracy, ± its standard error."""
    lines = []
    for batch in sorted({a[4] for a in arms}):
        bn, ghost = ([validation(r, "ghost-batch") for r in next(rs for a, rs in arms.items() if a[1] == norm and a[4] == batch)]
                     for norm in ("bn", "ghost"))
        se = math.sqrt(statistics.variance(bn) / len(bn) + statistics.variance(ghost) / len(ghost))
        lines.append(f"ghost BN's gain at batch {batch}: {statistics.mean(ghost) - statistics.mean(bn):.4f} ± {se:.4f}")
    return "\n".join(lines)


def sensitivities(arms: dict) -> str:
    """Per depth and network, the claim's sensitivity on the validation split: each scheme at the
    rate the claim would choose (``base.tune``), then per seed (best - worst) / (best - chance)."""
    lines = []
    for depth, norm in sorted({(a[0], a[1]) for a in arms}):
        best = []
        for init in init_robustness.SCHEMES:
            _, chosen = base.tune([r for a, rs in arms.items() if a[:3] == (depth, norm, init) for r in rs])
            best.append([validation(r) for r in chosen])
        per_seed = [init_robustness.sensitivity(max(accs), min(accs), 0.1) for accs in zip(*best)]  # 10 classes
        lines.append(f"sensitivity, {depth} layers, {norm}: {statistics.mean(per_seed):.3f} ± {statistics.stdev(per_seed):.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
