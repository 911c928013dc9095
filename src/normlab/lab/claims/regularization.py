"""regularization: batch normalization is a mild regularizer, but it does not replace dropout.

The 3-minute tutorial "Batch Normalization", the long overview "Batch Normalization in Deep
Learning" and a "Deep Learning" revision note: BN's batch statistics differ from batch to
batch, and that noise "acts as a regularizer, similar to dropout" (the tutorial; the
revision note: "it is thus unnecessary to use dropout"); but "Batch Normalization does not
replace regularisation methods like dropout ... this effect is often insufficient for
preventing overfitting ... Combining Batch Normalization with dropout ... can enhance model
generalisation" (the overview).

Here: a network that overfits: a wide MLP (3 hidden layers of 256 ReLU units) trained
on the first 500 MNIST-1D training samples with Adam (learning rate 1e-3, batch 50, as
in the code of the tutorial "Batch Normalization") for 100 (quick) or 300 (full) epochs, long enough for every
variant to fit the training samples (99% and more), in four variants: no regularizer,
BN (before the activation), dropout 0.5 after each hidden layer, both.
Both accuracies are measured at the end in eval mode (running statistics, no dropout);
the gap is training minus test accuracy. Two parts, each judged on its own:

1. *BN regularizes*: the gap is smaller with BN than without anything;
2. *BN does not replace dropout*: adding dropout to the BN network raises its test
   accuracy (if BN made dropout redundant, it would not).

The smallest effect of interest of both is one percentage point of accuracy (:data:`SMALLEST`).
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

SMALLEST = 0.01  # one percentage point of accuracy
DROPOUT = 0.5
TRAIN_SAMPLES = 500
VARIANTS = {  # (norm, dropout) -> label
    ("none", 0.0): "none",
    ("bn", 0.0): "BN",
    ("none", DROPOUT): "dropout",
    ("bn", DROPOUT): "BN + dropout",
}


def runs(profile: Profile) -> list[RunConfig]:
    steps = profile.pick(20, 1000, 3000)  # 10 steps per epoch
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=256, activation="relu", norm=norm, dropout=dropout),
            data=profile.data,
            optimizer="adam",
            lr=1e-3,
            batch_size=50,
            steps=steps,
            eval_every=steps // 10,
            seed=seed,
            train_subset=TRAIN_SAMPLES,
        )
        for norm, dropout in VARIANTS
        for seed in profile.seeds
    ]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.norm, c.model.dropout))
    q_test, q_train = base.resolution(runs), 1 / TRAIN_SAMPLES
    figures = {}
    for key, label in VARIANTS.items():
        rs = by[key]
        test = [r.result["final_test_accuracy"] for r in rs]
        train = [r.result["final_train_accuracy"] for r in rs]
        figures[f"test accuracy, {label}"] = stats.stat(test, q_test)
        figures[f"training accuracy, {label}"] = stats.stat(train, q_train)
        figures[f"gap (training - test), {label}"] = stats.stat([a - b for a, b in zip(train, test)], max(q_test, q_train))
    return figures


def parts(figures: dict):
    return [
        stats.compare(
            figures["gap (training - test), none"],
            figures["gap (training - test), BN"],
            what="gap closed by BN (none - BN)",
            smallest=SMALLEST,
        ),
        stats.compare(
            figures["test accuracy, BN + dropout"],
            figures["test accuracy, BN"],
            what="test accuracy dropout adds to BN (BN + dropout - BN)",
            smallest=SMALLEST,
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title=f"regularization: 3x256 ReLU MLP on {TRAIN_SAMPLES} training samples")
    labels = list(VARIANTS.values())
    x = range(len(labels))
    colors = [plots.color(label) for label in labels]  # the normalization's; dropout hatched
    hatches = ["//" if "dropout" in label else "" for label in labels]
    for name, offset, alpha in (("training accuracy", -0.2, 0.45), ("test accuracy", 0.2, 1.0)):
        stats = [figures[f"{name}, {label}"] for label in labels]
        axes[0].bar([i + offset for i in x], [s["mean"] for s in stats], 0.4, yerr=[s["std"] for s in stats], capsize=3,
                    color=colors, alpha=alpha, hatch=hatches, edgecolor="white")
    gaps = [figures[f"gap (training - test), {label}"] for label in labels]
    axes[1].bar(x, [s["mean"] for s in gaps], 0.6, yerr=[s["std"] for s in gaps], capsize=3, color=colors, hatch=hatches, edgecolor="white")
    for ax, ylabel in ((axes[0], "accuracy (eval mode)"), (axes[1], "gap: training - test accuracy")):
        ax.set_xticks(list(x), labels, rotation=15)
        ax.set(ylabel=ylabel)
    from matplotlib.patches import Patch

    kinds = [Patch(color="grey", alpha=0.45), Patch(color="grey"), Patch(facecolor="grey", hatch="//", edgecolor="white")]
    plots.legend(axes[1], kinds, ["training accuracy (light)", "test accuracy", "with dropout"])
    return fig


CLAIM = Claim(
    name="regularization",
    headline="BN regularizes, but does not replace dropout",
    source='the tutorials "Batch Normalization" and "Batch Normalization in Deep Learning", a "Deep Learning" revision note',
    statement=(
        "BN acts as a mild regularizer (its batch statistics are noisy), but it does not replace dropout: "
        "combined with dropout, a BN network generalizes better."
    ),
    measured=(
        f"training and test accuracy (eval mode) of a 3x256 ReLU MLP trained to overfit {TRAIN_SAMPLES} MNIST-1D "
        f"samples (Adam), with no regularizer, BN, dropout {DROPOUT}, BN + dropout"
    ),
    criterion=(
        "both: (1) the train-test gap is smaller with BN than with nothing; (2) BN + dropout reaches a higher test "
        f"accuracy than BN alone; smallest effect of interest of each: {SMALLEST * 100:g} percentage point"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
