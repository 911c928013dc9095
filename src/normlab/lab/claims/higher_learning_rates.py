"""higher-learning-rates: batch normalization lets the network train at higher learning rates.

Ioffe & Szegedy 2015 (Sec. 4.2.1, BN-x5 and BN-x30): with BN, Inception trains with the
learning rate raised 5 and 30 times, and reaches its accuracy sooner. Bjorck, Gomes,
Selman & Weinberger 2018 ("Understanding Batch Normalization"): without BN large
learning rates diverge; BN makes them usable, and it is the larger rate that gives BN
its advantage: trained at a small rate, networks with and without BN perform alike
(their Fig. 1), so BN's advantage should shrink at a small common rate and grow at a
large one.

Here: the 3x100 sigmoid MLP with and without BN on MNIST-1D, plain SGD (batch 60) at
learning rates from 0.03 to 100 in half decades (:data:`RATES`). A run *trains* when
its final accuracy is at least twice chance and it did not diverge (NaN/inf). Two parts:

1. the largest learning rate that trains (test accuracy), per seed, compared in log10;
2. Bjorck et al.'s interaction, a difference of differences: BN's advantage in test
   accuracy (BN - no BN, the same seed) at a large common rate minus its advantage at
   a small one. The rates are chosen on the validation split, never the test split:
   the *small* rate is the smallest of the sweep at which both networks train (mean
   final validation accuracy at least twice chance), so that "alike" is not both at
   chance; the *large* one is BN's tuned rate among those at least :data:`SPAN` (a
   decade) above the small one: its best mean final validation accuracy there. The
   span keeps the two rates apart whatever BN prefers (on this network BN's best rate
   overall can be the small one itself, which would make the difference zero by
   construction).

Smallest effects of interest: a decade, two steps of the grid (1; a grid cannot show an
effect smaller than about one step, :mod:`normlab.lab.stats`), and two percentage points
of accuracy (2).
"""

from __future__ import annotations

import math

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

RATES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
GRID = 0.5  # decades between two rates of the sweep
SMALLEST_DECADES = 1.0  # learning rate gained with BN: a factor of 10, two steps of the grid
TRAINS = 2.0  # a run trains when its final accuracy is at least TRAINS x chance
SPAN = 1.0  # decades, at least, from the small common rate to the large one
SMALLEST_INTERACTION = 0.02  # BN's advantage at the large rate over its advantage at the small one, in accuracy
NORMS = {"bn": "BN", "none": "no BN"}


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
        for norm in NORMS
        for lr in RATES
        for seed in profile.seeds
    ]


def _trains(run: Run, chance: float) -> bool:
    return run.result["diverged"] is None and base.accuracy(run) >= TRAINS * chance


def common_rates(val: dict, chance: float) -> tuple[float, float]:
    """The small and the large common rate of part 2 from the mean final validation accuracies
    ``val[norm][lr]`` (see the module docstring): ``(small, large)``. Where no rate of the
    sweep lies a span above the small one, the large one is the sweep's largest."""
    both = [lr for lr in RATES if all(val[n][lr] >= TRAINS * chance for n in NORMS)]
    small = both[0] if both else RATES[0]
    above = [lr for lr in RATES if math.log10(lr / small) >= SPAN - 1e-9] or [RATES[-1]]
    return small, max(above, key=lambda lr: val["bn"][lr])  # ties: the smaller rate


def summarize(runs: list[Run]) -> dict:
    chance = 1 / runs[0].result["classes"]
    q = {"test": base.resolution(runs), "val": 1 / runs[0].result["val_samples"]}
    by = base.group(runs, lambda c: (c.model.norm, c.lr))
    seeds = sorted({r.config.seed for r in runs})
    at = {key: {r.config.seed: r for r in rs} for key, rs in by.items()}
    below = math.log10(RATES[0]) - GRID  # where nothing trains: a step below the grid

    def largest(norm, seed):
        ok = [lr for lr in RATES if _trains(at[norm, lr][seed], chance)]
        return math.log10(max(ok)) if ok else below

    def trained(norm, lr, split):
        """Each seed's final accuracy on ``split``; a run that diverged counts with what is left of it."""
        return [base.accuracy(at[norm, lr][s], split) for s in seeds]

    val = {n: {lr: sum(trained(n, lr, "val")) / len(seeds) for lr in RATES} for n in NORMS}
    small, large = common_rates(val, chance)

    def advantage(lr):
        return [b - p for b, p in zip(trained("bn", lr, "test"), trained("none", lr, "test"))]

    figures: dict = {"a run trains at accuracy": TRAINS * chance}
    for n, label in NORMS.items():
        figures[f"largest learning rate that trains (log10), {label}"] = stats.stat([largest(n, s) for s in seeds], GRID)
    for n, label in NORMS.items():
        figures[f"learning rates that diverged, {label}"] = sorted({lr for lr in RATES for r in by[n, lr] if r.result["diverged"]})
    figures["small common rate (smallest at which both train, on validation)"] = small
    figures["large common rate (BN's best on validation, a decade or more above the small one)"] = large
    figures["BN's advantage in test accuracy at the small rate"] = stats.stat(advantage(small), q["test"])
    figures["BN's advantage in test accuracy at the large rate"] = stats.stat(advantage(large), q["test"])
    figures["interaction: advantage at the large rate - at the small rate"] = stats.stat(
        [hi - lo for hi, lo in zip(advantage(large), advantage(small))], q["test"]
    )
    for split, name in (("val", "validation"), ("test", "test")):
        for n, label in NORMS.items():
            figures[f"final {name} accuracy by learning rate, {label}"] = {
                f"{lr:g}": stats.stat(trained(n, lr, split), q[split]) for lr in RATES
            }
    return figures


def parts(figures: dict):
    small = figures["small common rate (smallest at which both train, on validation)"]
    large = figures["large common rate (BN's best on validation, a decade or more above the small one)"]
    return [
        stats.compare(
            figures["largest learning rate that trains (log10), BN"],
            figures["largest learning rate that trains (log10), no BN"],
            what="decades of learning rate gained with BN",
            smallest=SMALLEST_DECADES,
            unit="decades",
        ),
        stats.compare(
            figures["interaction: advantage at the large rate - at the small rate"],
            0.0,
            what=f"BN's advantage in test accuracy at rate {large:g} minus at rate {small:g}",
            smallest=SMALLEST_INTERACTION,
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title="higher-learning-rates: 3x100 sigmoid MLP, SGD (mean ± std over seeds)")
    for ax, split in zip(axes, ("validation", "test")):
        for label in NORMS.values():
            f = figures[f"final {split} accuracy by learning rate, {label}"]
            line = ax.errorbar([float(lr) for lr in f], [v["mean"] for v in f.values()], yerr=[v["std"] for v in f.values()],
                               marker="o", capsize=3, label=label, color=plots.color(label))
            diverged = figures[f"learning rates that diverged, {label}"]
            if diverged:
                ax.plot(diverged, [0] * len(diverged), "x", color=line[0].get_color(), label=f"{label}: diverged")
        ax.axhline(figures["a run trains at accuracy"], color="grey", linestyle=":", label="trains above")
        ax.set(xscale="log", xlabel="learning rate (SGD)", ylabel=f"final {split} accuracy")
    for key, style in (("small common rate", "--"), ("large common rate", "-.")):
        rate = next(v for k, v in figures.items() if k.startswith(key))
        for ax in axes:
            ax.axvline(rate, color="black", linestyle=style, linewidth=1, label=f"{key} (chosen on validation)")
    plots.legend(axes[-1])
    return fig


CLAIM = Claim(
    name="higher-learning-rates",
    headline="BN makes high learning rates usable, and its advantage comes from training at them",
    source="Ioffe & Szegedy 2015, Sec. 4.2 (BN-x5, BN-x30); Bjorck, Gomes, Selman & Weinberger 2018, Sec. 2, Fig. 1",
    statement=(
        "BN makes much higher learning rates usable, and it is training at those rates that gives BN networks "
        "their advantage: at a small common rate networks with and without BN train alike."
    ),
    measured=(
        "a learning-rate sweep (0.03 to 100, SGD) of the 3x100 sigmoid MLP with and without BN: the largest rate "
        "that trains (final test accuracy >= 2x chance, no divergence); and BN's advantage in test accuracy at a "
        "large common rate (BN's best on validation, a decade or more above the small one) minus its advantage at a "
        "small one (the smallest at which both train on validation), per seed"
    ),
    criterion=(
        f"both: BN's largest trainable rate is higher (smallest effect of interest: {SMALLEST_DECADES:g} decade), and "
        f"BN's advantage is larger at the large rate than at the small one ({SMALLEST_INTERACTION * 100:g} points)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
