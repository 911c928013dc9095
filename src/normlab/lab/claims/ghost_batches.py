"""ghost-batches: at a large batch, ghost batch norm narrows the gap to small-batch training.

Hoffer, Hubara & Soudry 2017 ("Train longer, generalize better"): the "generalization
gap" of large-batch training (lower test accuracy than with small batches) "stems from
the relatively small number of updates rather than the batch size, and can be
completely eliminated by adapting the training regime": training the large batch for
the same number of updates as the small one, with the learning rate scaled by
``sqrt(large / small)``. Their *ghost batch norm* (BN statistics over virtual batches of
the small size, restoring the noise of small-batch statistics) "enables significant
decrease in the generalization gap without increasing the number of updates"; their
Table 1 compares small batch, large batch, +LR scaling, +GBN and + regime adaptation on
MNIST, CIFAR and ImageNet networks (batch 4096 against 128).

Here, the regime adaptation's comparison, all at the same number of updates: a 3x100
ReLU MLP with BN on the first 1000 MNIST-1D training samples (so that within those
updates the small batch nearly fits its training set, as the paper's small-batch
baselines do), SGD with momentum 0.9:

* small batch: 16 samples, learning rate 0.01;
* large batch: 256 samples (16x), learning rate 0.04 (``0.01 * sqrt(16)``), BN;
* the same large batch with ghost BN over virtual batches of 16 (the small batch).

Two parts, both needed: (1) there is a gap to narrow: the small batch's final test
accuracy is higher than the large batch's with BN; (2) ghost BN narrows it: the large
batch's test accuracy is higher with ghost BN than with BN.

Also reported, not judged: the paper's other regime, the large batch trained for the
same *epochs* as the small one (16x fewer updates), where its abstract places ghost
BN's gain ("without increasing the number of updates"). Nothing in a run depends on
its length, so that is the large-batch runs' own test accuracy at step
``steps * 16 / 256``, which every run logs.
"""

from __future__ import annotations

import math

from .. import stats
from ..models import GHOST_BATCH, ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

SMALLEST = 0.01  # one percentage point of test accuracy, for both parts

SMALL, LARGE = GHOST_BATCH, 256
LR = 0.01  # at the small batch; the large batch's is LR * sqrt(LARGE / SMALL)
TRAIN_SAMPLES = 1000
VARIANTS = {  # (norm, batch) -> label
    ("bn", SMALL): f"small batch ({SMALL}), BN",
    ("bn", LARGE): f"large batch ({LARGE}), BN",
    ("ghost", LARGE): f"large batch ({LARGE}), ghost BN ({GHOST_BATCH})",
}


def runs(profile: Profile) -> list[RunConfig]:
    steps = profile.pick(16, 1600, 3200)
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="relu", norm=norm),
            data=profile.data,
            optimizer="sgd",
            lr=LR * math.sqrt(batch / SMALL),
            momentum=0.9,
            batch_size=batch,
            steps=steps,
            eval_every=steps * SMALL // LARGE,  # logs the large batch at the small batch's epochs
            seed=seed,
            train_subset=TRAIN_SAMPLES,
        )
        for norm, batch in VARIANTS
        for seed in profile.seeds
    ]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.norm, c.batch_size))
    q = base.resolution(runs)
    test = {k: stats.stat([r.result["final_test_accuracy"] for r in by[k]], q) for k in VARIANTS}
    small, large, ghost = (test[k] for k in VARIANTS)
    figures = {f"test accuracy, {label}": test[k] for k, label in VARIANTS.items()}
    for k, label in VARIANTS.items():
        figures[f"training accuracy, {label}"] = stats.stat([r.result["final_train_accuracy"] for r in by[k]], 1 / TRAIN_SAMPLES)
    figures["gap (small - large batch, BN)"] = small["mean"] - large["mean"]
    figures["fraction of the gap ghost BN closes"] = base.ratio(ghost["mean"] - large["mean"], small["mean"] - large["mean"])
    for k, label in list(VARIANTS.items())[1:]:
        at = [accuracy_at(r, r.config.steps * SMALL // LARGE) for r in by[k]]
        figures[f"test accuracy at the small batch's epochs (not judged), {label}"] = stats.stat(at, q)
    return figures


def accuracy_at(run: Run, step: int) -> float:
    """The test accuracy logged at ``step``; a run that diverged before it, its final accuracy."""
    steps = run.result["step"]
    return run.result["test_accuracy"][steps.index(step)] if step in steps else run.result["final_test_accuracy"]


def parts(figures: dict):
    small, large, ghost = (figures[f"test accuracy, {label}"] for label in VARIANTS.values())
    return [
        stats.compare(small, large, smallest=SMALLEST, what="generalization gap (small batch - large batch, test accuracy)"),
        stats.compare(ghost, large, smallest=SMALLEST, what="test accuracy ghost BN adds at the large batch (ghost BN - BN)"),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (ax,) = plots.figure(title=f"ghost-batches: 3x100 ReLU MLP, {TRAIN_SAMPLES} samples, same updates", width=6)
    by = base.group(runs, lambda c: (c.model.norm, c.batch_size))
    for key, label in VARIANTS.items():
        rs = by[key]
        style = {"linestyle": "--"} if key[1] == SMALL else {}  # the colour is the normalization's
        plots.band(ax, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], label, **style)
    same_epochs = runs[0].config.steps * SMALL // LARGE
    ax.axvline(same_epochs, color="grey", linestyle=":", label="large batch: the small batch's epochs")
    ax.set(xlabel="updates (training steps)", ylabel="test accuracy")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="ghost-batches",
    headline="With as many updates, a large batch still generalizes worse, and ghost BN narrows the gap",
    source="Hoffer, Hubara & Soudry 2017, Sec. 4-5 and Table 1",
    statement=(
        "Training with a large batch for the same number of updates as a small batch, ghost batch norm "
        "(statistics over virtual batches of the small size) narrows the generalization gap to small-batch training."
    ),
    measured=(
        f"final test accuracy of a 3x100 ReLU MLP on {TRAIN_SAMPLES} MNIST-1D samples, same number of SGD updates: "
        f"batch {SMALL} with BN, batch {LARGE} with BN, batch {LARGE} with ghost BN over {GHOST_BATCH} "
        "(learning rate scaled by sqrt of the batch ratio)"
    ),
    criterion=(
        "both: the small batch beats the large batch with BN (a gap exists), and ghost BN beats BN at the large "
        f"batch (it narrows the gap); smallest effect of interest of each: {SMALLEST * 100:g} percentage point"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
