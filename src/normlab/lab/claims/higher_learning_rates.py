"""higher-learning-rates: batch normalization lets the network train at higher learning rates.

Ioffe & Szegedy 2015 (Sec. 4.2.1, BN-x5 and BN-x30): with BN, Inception trains with the
learning rate raised 5 and 30 times, and reaches its accuracy sooner. Bjorck et al. 2018
("Understanding batch normalization"): without BN large learning rates diverge; BN
makes them usable, and that larger step size is what makes BN networks train faster.

Here: the 3x100 sigmoid MLP with and without BN on MNIST-1D, plain SGD (batch 60) at
learning rates from 0.3 to 100 in half decades. A run *trains* when its final test
accuracy is at least twice chance and it did not diverge (NaN/inf). Two parts:

1. the largest learning rate that trains, per seed (compared in log10);
2. BN at a rate above the largest one the plain network trains at, against the plain
   network at its fastest rate: steps to reach 95% of the plain network's best final
   accuracy (its best learning rate, mean over seeds). A run that never gets there
   counts at the step budget.

Smallest effects of interest: a decade, two steps of the grid (1), and a tenth of the
step budget (2). Both measures are quantized, by the grid and by the logging interval:
those are their resolutions, and a grid cannot show an effect smaller than about one
step (:mod:`normlab.lab.stats`), hence two.
"""

from __future__ import annotations

import math

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

RATES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
GRID = 0.5  # decades between two rates of the sweep
SMALLEST_DECADES = 1.0  # learning rate gained with BN: a factor of 10, two steps of the grid
TRAINS = 2.0  # a run trains when its final test accuracy is at least TRAINS x chance
TARGET_FRACTION = 0.95
SMALLEST_STEPS = 0.1  # steps saved, as a fraction of the step budget


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="sigmoid", norm=norm),
            data=profile.data,
            optimizer="sgd",
            lr=lr,
            batch_size=60,
            steps=profile.pick(40, 1500, 6000),
            eval_every=profile.pick(10, 100, 200),
            seed=seed,
        )
        for norm in ("none", "bn")
        for lr in RATES
        for seed in profile.seeds
    ]


def _trains(run: Run, chance: float) -> bool:
    return run.result["diverged"] is None and run.result["final_test_accuracy"] >= TRAINS * chance


def summarize(runs: list[Run]) -> dict:
    chance = 1 / runs[0].result["classes"]
    by = base.group(runs, lambda c: (c.model.norm, c.seed))
    seeds = sorted({s for _, s in by})
    below = math.log10(RATES[0]) - 0.5  # where nothing trains: half a decade below the grid

    def largest(norm, seed):
        ok = [r.config.lr for r in by[norm, seed] if _trains(r, chance)]
        return math.log10(max(ok)) if ok else below

    largest_lr = {n: stats.stat([largest(n, s) for s in seeds], GRID) for n in ("none", "bn")}
    diverged = {n: sorted({r.config.lr for s in seeds for r in by[n, s] if r.result["diverged"]}) for n in ("none", "bn")}
    final = {
        (n, lr): stats.stat([r.result["final_test_accuracy"] for s in seeds for r in by[n, s] if r.config.lr == lr], base.resolution(runs))
        for n in ("none", "bn")
        for lr in RATES
    }
    best_plain = max(final["none", lr]["mean"] for lr in RATES)
    target = TARGET_FRACTION * best_plain
    plain_fastest, bn_high = [], []
    for s in seeds:
        plain_fastest.append(min(base.steps_to(r, target, never=r.config.steps) for r in by["none", s]))
        high = [r for r in by["bn", s] if math.log10(r.config.lr) > largest_lr["none"]["values"][seeds.index(s)]]
        bn_high.append(min((base.steps_to(r, target, never=r.config.steps) for r in high), default=by["bn", s][0].config.steps))
    every = runs[0].config.eval_every
    return {
        "step budget": runs[0].config.steps,
        "a run trains at test accuracy": TRAINS * chance,
        "largest learning rate that trains (log10), BN": largest_lr["bn"],
        "largest learning rate that trains (log10), no BN": largest_lr["none"],
        "learning rates that diverged, BN": diverged["bn"],
        "learning rates that diverged, no BN": diverged["none"],
        "target test accuracy": target,
        "steps to target, BN above the no-BN network's largest rate": stats.stat(bn_high, every),
        "steps to target, no BN at its fastest rate": stats.stat(plain_fastest, every),
        "final test accuracy by learning rate, BN": {str(lr): final["bn", lr] for lr in RATES},
        "final test accuracy by learning rate, no BN": {str(lr): final["none", lr] for lr in RATES},
    }


def parts(figures: dict):
    return [
        stats.compare(
            figures["largest learning rate that trains (log10), BN"],
            figures["largest learning rate that trains (log10), no BN"],
            what="decades of learning rate gained with BN",
            smallest=SMALLEST_DECADES,
            unit="decades",
        ),
        stats.compare(
            figures["steps to target, no BN at its fastest rate"],
            figures["steps to target, BN above the no-BN network's largest rate"],
            what="steps saved by BN at a higher rate",
            smallest=SMALLEST_STEPS * figures["step budget"],
            unit="steps",
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (ax,) = plots.figure(title="higher-learning-rates: 3x100 sigmoid MLP")
    for norm, label in (("bn", "BN"), ("none", "no BN")):
        f = figures[f"final test accuracy by learning rate, {label}"]
        lrs = [float(lr) for lr in f]
        mean = [f[k]["mean"] for k in f]
        std = [f[k]["std"] for k in f]
        line = ax.errorbar(lrs, mean, yerr=std, marker="o", capsize=3, label=label, color=plots.color(label))
        diverged = figures[f"learning rates that diverged, {label}"]
        if diverged:
            ax.plot(diverged, [0] * len(diverged), "x", color=line[0].get_color(), label=f"{label}: diverged")
    ax.axhline(figures["a run trains at test accuracy"], color="grey", linestyle=":", label="trains above")
    ax.set(xscale="log", xlabel="learning rate (SGD)", ylabel="final test accuracy")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="higher-learning-rates",
    headline="BN trains at higher learning rates, and its speed comes from them",
    source="Ioffe & Szegedy 2015, Sec. 4.2 (BN-x5, BN-x30); Bjorck et al. 2018",
    statement=(
        "BN makes much higher learning rates usable, and training at those rates is what makes "
        "BN networks reach their accuracy sooner."
    ),
    measured=(
        "a learning-rate sweep (0.3 to 100, SGD) of the 3x100 sigmoid MLP with and without BN: the largest rate "
        "that trains (final accuracy >= 2x chance, no divergence), and steps to 95% of the no-BN network's best "
        "accuracy for BN above that rate vs. no BN at its fastest rate"
    ),
    criterion=(
        f"both: BN's largest trainable rate is higher (smallest effect of interest: {SMALLEST_DECADES:g} decade), and "
        f"BN at a higher rate reaches the target in fewer steps ({SMALLEST_STEPS:.0%} of the step budget)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
