"""ghost-batches: at equal epochs, ghost batch norm narrows the gap of large-batch training.

Hoffer, Hubara & Soudry 2017, "Train longer, generalize better: closing the
generalization gap in large batch training of neural networks": the "generalization
gap" (large batches reach a lower test accuracy than small ones in the same epochs)
"stems from the relatively small number of updates rather than the batch size, and
can be completely eliminated by adapting the training regime used"; their "Ghost Batch
Normalization ... enables significant decrease in the generalization gap without
increasing the number of updates" (abstract). Ghost BN normalizes over virtual batches
of the small size inside the large one; the large batch's learning rate is the small
one's times ``sqrt(large / small)`` (their Sec. 4). So the ghost-BN claim is made at
the *same epochs* (the large batch makes ``large / small`` times fewer updates), with
the learning rate scaled: their Table 1's "+LR" and "+GBN" columns. At the same number
of updates ("regime adaptation") the paper says there is no gap left to narrow.

Here: a 3x100 ReLU MLP with BN on the first 1024 training samples (so that the small
batch nearly fits them within the budget, as the paper's small-batch baselines do),
SGD with momentum 0.9, all arms for the same epochs:

* small batch: 16 samples, learning rate ``lr``;
* large batch: 512 samples (32x, the paper's ratio: 4096 against 128), learning rate
  ``lr * sqrt(32)``, about ``5.66 lr``, BN;
* the same large batch with ghost BN over virtual batches of 16 (the small batch).

``lr`` is the small batch's: the one of :data:`LRS` with the best mean validation
accuracy of the small-batch runs (its regime tuned, as the paper's baselines are; the
large batch's follows from it by the paper's rule, never by its own test accuracy).

Two parts, both needed: (1) there is a gap at the same epochs: the small batch's
final test accuracy is higher than the large batch's with BN; (2) ghost BN narrows
it: the large batch's test accuracy is higher with ghost BN than with BN.
"""

from __future__ import annotations

import math

from .. import stats
from ..models import GHOST_BATCH, ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

SMALLEST = 0.01  # one percentage point of test accuracy, for both parts

SMALL, LARGE = GHOST_BATCH, 512  # the ratio of Hoffer et al.'s Table 1 (4096 / 128)
TRAIN_SAMPLES = 1024  # a whole number of batches of either size: an epoch is the same samples for both
LRS = (0.005, 0.01, 0.02)  # the small batch's learning rates; the large batch's are sqrt(LARGE / SMALL) times these
VARIANTS = {  # (norm, batch) -> label
    ("bn", SMALL): f"small batch ({SMALL}), BN",
    ("bn", LARGE): f"large batch ({LARGE}), BN",
    ("ghost", LARGE): f"large batch ({LARGE}), ghost BN ({GHOST_BATCH})",
}


def scaled(lr: float, batch: int) -> float:
    """The learning rate at ``batch`` for the small batch's ``lr``: Hoffer et al.'s ``lr * sqrt(batch / SMALL)``."""
    return lr * math.sqrt(batch / SMALL)


def runs(profile: Profile) -> list[RunConfig]:
    epochs = profile.pick(1, 25, 50)
    out = []
    for lr in LRS:
        for norm, batch in VARIANTS:
            steps = epochs * TRAIN_SAMPLES // batch  # the same epochs: every arm sees the same samples, as often
            out += [
                RunConfig(
                    ModelSpec("mlp", depth=3, width=100, activation="relu", norm=norm),
                    data=profile.data,
                    optimizer="sgd",
                    lr=scaled(lr, batch),
                    momentum=0.9,
                    batch_size=batch,
                    steps=steps,
                    eval_every=max(1, steps // 10),
                    seed=seed,
                    train_subset=TRAIN_SAMPLES,
                )
                for seed in profile.seeds
            ]
    return out


def small_lr(config: RunConfig) -> float:
    """The small batch's learning rate a run's was scaled from."""
    return min(LRS, key=lambda lr: abs(scaled(lr, config.batch_size) - config.lr))


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.norm, c.batch_size))
    lr, _ = base.tune(by["bn", SMALL])
    q = base.resolution(runs)
    chosen = {k: [r for r in by[k] if small_lr(r.config) == lr] for k in VARIANTS}
    figures: dict = {"learning rate of the small batch, chosen on the validation split": lr}
    figures["validation accuracy of the small batch by learning rate"] = {
        f"{x:g}": stats.stat([base.accuracy(r, "val") for r in by["bn", SMALL] if small_lr(r.config) == x], q) for x in LRS
    }
    test = {k: stats.stat([base.accuracy(r) for r in rs], q) for k, rs in chosen.items()}
    small, large, ghost = (test[k] for k in VARIANTS)
    figures.update({f"test accuracy, {label}": test[k] for k, label in VARIANTS.items()})
    for k, label in VARIANTS.items():
        figures[f"training accuracy, {label}"] = stats.stat([r.result["final_train_accuracy"] for r in chosen[k]], 1 / TRAIN_SAMPLES)
    for k, label in VARIANTS.items():
        figures[f"updates, {label}"] = chosen[k][0].config.steps
    figures["gap (small - large batch, BN)"] = small["mean"] - large["mean"]
    figures["fraction of the gap ghost BN closes"] = base.ratio(ghost["mean"] - large["mean"], small["mean"] - large["mean"])
    return figures


def parts(figures: dict):
    small, large, ghost = (figures[f"test accuracy, {label}"] for label in VARIANTS.values())
    return [
        stats.compare(small, large, smallest=SMALLEST, what="generalization gap at the same epochs (small batch - large batch, test accuracy)"),
        stats.compare(ghost, large, smallest=SMALLEST, what="test accuracy ghost BN adds at the large batch (ghost BN - BN)"),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    lr = figures["learning rate of the small batch, chosen on the validation split"]
    title = f"ghost-batches: 3x100 ReLU MLP, {TRAIN_SAMPLES} samples, same epochs (small batch at lr {lr:g})"
    fig, (ax,) = plots.figure(title=title, width=6)
    by = base.group(runs, lambda c: (c.model.norm, c.batch_size))
    for key, label in VARIANTS.items():
        rs = [r for r in by[key] if small_lr(r.config) == lr]
        epochs = [s * key[1] / TRAIN_SAMPLES for s in rs[0].result["step"]]
        style = {"linestyle": "--"} if key[1] == SMALL else {}  # the colour is the normalization's
        plots.band(ax, epochs, [r.result["test_accuracy"] for r in rs], label, **style)
    ax.set(xlabel="epochs", ylabel="test accuracy")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="ghost-batches",
    headline="In the same epochs a large batch generalizes worse, and ghost BN narrows the gap",
    source=(
        'Hoffer, Hubara & Soudry 2017, "Train longer, generalize better: closing the generalization gap in large '
        'batch training of neural networks", abstract, Secs. 4-5, Table 1'
    ),
    statement=(
        "Training with a large batch for the same epochs as a small batch (fewer updates), with the learning rate "
        "scaled by the square root of the batch ratio, ghost batch norm (statistics over virtual batches of the small "
        "size) narrows the generalization gap to small-batch training, without increasing the number of updates."
    ),
    measured=(
        f"final test accuracy of a 3x100 ReLU MLP on {TRAIN_SAMPLES} training samples, the same epochs for each arm: "
        f"batch {SMALL} with BN, batch {LARGE} with BN, batch {LARGE} with ghost BN over {GHOST_BATCH} "
        "(learning rate scaled by the square root of the batch ratio from the small batch's, which is chosen on the "
        "validation split)"
    ),
    criterion=(
        "both: the small batch beats the large batch with BN (a gap at the same epochs), and ghost BN beats BN at the "
        f"large batch (it narrows the gap); smallest effect of interest of each: {SMALLEST * 100:g} percentage point"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
