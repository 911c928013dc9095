"""learning-rate-tuning: with batch normalization the learning rate still needs tuning.

"Batch Normalization in Deep Learning" (the long overview): "Does Batch Normalization
Eliminate the Need for Learning Rate Tuning? No ... the learning rate remains a crucial
hyperparameter. Choosing an optimal learning rate still significantly impacts how fast
and effectively your model converges."

Here: the 3x100 ReLU MLP with BN, SGD with momentum 0.9, batch 60, trained at each
learning rate of a sweep over three decades in half decades, 0.001 to 1 (:data:`RATES`), the same
steps for all. A sweep wide enough always holds a rate that fails, so "some rate is
worse" would be reproduced by construction; the claim is judged at the error a tuning
saves instead: *a learning rate ten times off*. The rate is tuned on the validation
split of the first half of the seeds (the *tuning* seeds: the best mean final
validation accuracy over them), and judged on the other half: the cost of mistuning of
a judged seed is its test accuracy at the tuned rate minus its mean test accuracy at
the rates a decade below and a decade above (those of the sweep: one of them where the
tuned rate lies within a decade of an end). Tuning and judging on different seeds is
what keeps the verdict honest: a rate chosen on a seed's own runs is one where that
seed was lucky, on validation and on test alike (a run good on one split is good on
the other), and even a rate chosen on the *other* seeds of the same set ties the
seeds' costs together (both were lucky where the rest chose), which their spread does
not show; both overstate the cost of a flat sweep (tests/lab/test_claim_learning_rate_tuning.py
measures it). With seeds added in rounds, each round tunes on its first half of the
seeds and judges the second, which it has not seen. The smallest
effect of interest is one point of test accuracy (:data:`SMALLEST`), the lab's smallest
difference of test accuracy of interest (as in placement): a factor of ten that costs
less than that is one a user need not tune away. The accuracies are those every run logs
(:func:`base.accuracy`: a run that diverged counts with what is left of it), and the rate
is chosen as every tuning claim chooses it (:func:`base.tune`).
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

RATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # half decades: a rate's decade neighbours are two places away
DECADE = 2  # places in RATES between a rate and ten times it
SMALLEST = 0.01  # smallest effect of interest: one point of test accuracy lost to a rate ten times off
COLOR = "C0"  # BN's


def runs(profile: Profile) -> list[RunConfig]:
    steps = profile.pick(30, 300, 3000)
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="relu", norm="bn"),
            data=profile.data,
            optimizer="sgd",
            lr=lr,
            momentum=0.9,
            batch_size=60,
            steps=steps,
            eval_every=steps,  # only the final accuracies are judged
            seed=seed,
        )
        for lr in RATES
        for seed in profile.seeds
    ]


def decade_off(tuned: float) -> list[float]:
    """The rates of the sweep ten times below and above ``tuned`` (one of them at the sweep's ends)."""
    i = RATES.index(tuned)
    return [RATES[j] for j in (i - DECADE, i + DECADE) if 0 <= j < len(RATES)]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.lr)
    resolution = {split: 1 / runs[0].result[f"{split}_samples"] for split in ("val", "test")}
    figures: dict = {}
    for split, name in (("val", "validation"), ("test", "test")):
        figures[f"final {name} accuracy by learning rate"] = {
            f"{lr:g}": stats.stat([base.accuracy(r, split) for r in by[lr]], resolution=resolution[split]) for lr in RATES
        }
    test = {lr: {r.config.seed: base.accuracy(r, "test") for r in by[lr]} for lr in RATES}
    seeds = sorted(test[RATES[0]])
    tuning, judged = seeds[: len(seeds) // 2] or seeds, seeds[len(seeds) // 2 :]
    tuned, _ = base.tune([r for r in runs if r.config.seed in tuning])
    off = decade_off(tuned)
    cost = [test[tuned][s] - sum(test[lr][s] for lr in off) / len(off) for s in judged]
    figures["tuned learning rate (best validation accuracy of the tuning seeds)"] = tuned
    figures["rates ten times off it"] = off
    figures["seeds that tuned, seeds judged"] = [len(tuning), len(judged)]
    figures["test accuracy at the tuned rate (judged seeds)"] = stats.stat([test[tuned][s] for s in judged], resolution["test"])
    figures["test accuracy lost at a rate ten times off (judged seeds)"] = stats.stat(cost, resolution=resolution["test"])
    figures["runs that diverged"] = sum(bool(r.result["diverged"]) for r in runs)
    return figures


def parts(figures: dict) -> list[stats.Comparison]:
    return [
        stats.compare(
            figures["test accuracy lost at a rate ten times off (judged seeds)"],
            0.0,
            what="test accuracy at the tuned rate minus at the rates ten times off it (their mean), per judged seed",
            smallest=SMALLEST,
        )
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title="learning-rate-tuning: 3x100 ReLU MLP with BN, SGD with momentum 0.9 (mean ± std over seeds)")
    for ax, split in zip(axes, ("validation", "test")):
        by_rate = figures[f"final {split} accuracy by learning rate"]
        ax.errorbar(RATES, [by_rate[f"{lr:g}"]["mean"] for lr in RATES], yerr=[by_rate[f"{lr:g}"]["std"] for lr in RATES],
                    marker="o", capsize=3, color=COLOR, label="BN")
        ax.set(xscale="log", xlabel="learning rate", ylabel=f"final {split} accuracy")
    for ax in axes:
        ax.axvline(figures["tuned learning rate (best validation accuracy of the tuning seeds)"], color="grey", linestyle=":", label="tuned on validation")
    axes[0].legend()
    return fig


CLAIM = Claim(
    name="learning-rate-tuning",
    source='"Batch Normalization in Deep Learning" (the long overview: does BN eliminate the need for learning rate tuning?)',
    statement="Batch normalization does not remove the need to tune the learning rate: the choice still significantly changes the result.",
    measured=(
        f"final validation (and test) accuracy of the 3x100 ReLU MLP with BN, SGD with momentum 0.9, at learning rates "
        f"{', '.join(f'{r:g}' for r in RATES)}; the rate tuned on the validation split of half the seeds "
        "against the rates ten times below and above it, on the test split of the other half"
    ),
    criterion=(
        "a rate ten times off the one tuned on validation (below and above, their mean) loses test accuracy; "
        f"smallest effect of interest {SMALLEST * 100:g} point (the lab's smallest difference of test accuracy of interest)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
