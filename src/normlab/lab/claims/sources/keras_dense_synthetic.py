"""keras-dense-synthetic: the dense network of the 3-minute tutorial "Batch Normalization", as written.

The tutorial's Keras code builds, on "synthetic data (binary classification)" of 1000
samples of 20 uniform features with random 0/1 labels: Dense(64) with
``kernel_regularizer=l2(0.01)``, BatchNormalization, ReLU, Dropout(0.3); Dense(32), the
same with Dropout(0.2); Dense(1, sigmoid); Adam at 1e-3, binary cross-entropy; then
prints ``model.summary()``: 3,841 parameters, 3,649 trainable, 192 not (the moving
means and variances).

Here: that network as ``ModelSpec(..., **KERAS)`` (Glorot-uniform kernels, zero
biases kept before batch norm, momentum 0.99 in Keras's terms, eps 1e-3) on
``data.load("random-binary", "none")`` (the tutorial's data, values as generated),
its summary by :func:`normlab.summary`, and its training curve. The tutorial compiles
the model but never calls ``fit``: the budget is our choice, Keras's ``fit`` defaults
for the batch (32) and 100 epochs of 31 batches (Keras's default of one epoch would
draw no curve), the validation loss and accuracy after every epoch. The labels are
independent of the features, so nothing generalizes: the validation accuracy stays at
chance whatever the training accuracy does.
"""

from __future__ import annotations

from ... import data as datasets
from ...models import KERAS, ModelSpec, build
from ...train import RunConfig
from ... import stats
from ..base import Claim, Profile, Run

SPEC = ModelSpec(
    "mlp", depth=2, width=(64, 32), activation="relu", norm="bn", dropout=(0.3, 0.2), head="sigmoid", kernel_l2=0.01, **KERAS
)
# what the tutorial's model.summary() prints
SOURCE_SUMMARY = {"total": 3841, "trainable": 3649, "non_trainable": 192}
EPOCHS, BATCH = 100, 32
STEPS_PER_EPOCH = datasets.RANDOM_BINARY["train"] // BATCH  # 31: the lab drops the last partial batch (Keras runs it: 8 samples)


def runs(profile: Profile) -> list[RunConfig]:
    epoch = STEPS_PER_EPOCH
    return [
        RunConfig(
            SPEC,
            data="random-binary",
            preprocess="none",
            optimizer="adam",
            lr=1e-3,
            batch_size=BATCH,
            steps=profile.as_written(EPOCHS * epoch, 2 * epoch),
            eval_every=epoch,
            seed=seed,
            measures=("heldout",),
        )
        for seed in profile.seeds
    ]


def summary(config: RunConfig):
    """:func:`normlab.summary` of the run's network (20 features in, 2 classes: one sigmoid output)."""
    import normlab

    shape = (datasets.RANDOM_BINARY["features"],)
    return normlab.summary(build(config.model, shape, 2), shape)


def summarize(runs: list[Run]) -> dict:
    table = summary(runs[0].config)
    heldout = [r.result["measures"]["heldout"]["value"][-1] for r in runs]
    return {
        "parameters (total, trainable, non-trainable)": [table.total, table.trainable, table.non_trainable],
        "the tutorial's model.summary()": list(SOURCE_SUMMARY.values()),
        "final training loss (with the L2 penalty)": stats.stat([r.result["train_loss"][-1] for r in runs]),
        "final training accuracy (eval mode)": stats.stat([r.result["final_train_accuracy"] for r in runs]),
        "final validation accuracy": stats.stat([h["val_accuracy"] for h in heldout]),
        "final test accuracy": stats.stat([r.result["final_test_accuracy"] for r in runs]),
    }


EQUAL = 0.5  # counts are whole numbers: two that differ by less than half a parameter are equal


def parts(figures: dict) -> list[stats.Comparison]:
    """One part per count (total, trainable, non-trainable), both sides fixed numbers: the
    effect ``EQUAL - |normlab's count - the tutorial's|`` is positive exactly when they are
    equal (reproduced) and at most ``-EQUAL`` when they are not (not reproduced)."""
    ours, theirs = figures["parameters (total, trainable, non-trainable)"], figures["the tutorial's model.summary()"]
    return [
        stats.compare(
            EQUAL,
            abs(a - b),
            what=f"{kind} parameters, normlab {a:,} against the tutorial's {b:,}: half a parameter minus the difference",
            smallest=EQUAL,
            unit="parameters",
        )
        for kind, a, b in zip(("total", "trainable", "non-trainable"), ours, theirs)
    ]


def plot(runs: list[Run], figures: dict):
    from ... import plots

    fig, axes = plots.figure(2, title="keras-dense-synthetic: the 3-minute tutorial's network on its random labels", width=6)
    axes[0].axis("off")
    axes[0].text(0, 1, str(summary(runs[0].config)), family="monospace", fontsize=7, va="top")
    axes[0].set_title("normlab.summary (Keras's model.summary)")
    ax = axes[1]
    epochs = [s // STEPS_PER_EPOCH for s in runs[0].result["step"]]
    heldout = [r.result["measures"]["heldout"]["value"] for r in runs]
    plots.band(ax, epochs[1:], [r.result["train_loss"][1:] for r in runs], "training loss", color="C0")
    plots.band(ax, epochs, [[v["val_loss"] for v in h] for h in heldout], "validation loss", color="C0", linestyle="--")
    ax.set(xlabel="epoch (31 batches of 32)", ylabel="binary cross-entropy + L2")
    right = ax.twinx()
    plots.band(right, epochs, [[v["val_accuracy"] for v in h] for h in heldout], "validation accuracy", color="C3")
    right.axhline(0.5, color="grey", linestyle=":")
    right.set(ylabel="validation accuracy (chance 0.5)", ylim=(0, 1))
    lines = ax.get_lines() + right.get_lines()[:1]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    return fig


CLAIM = Claim(
    name="keras-dense-synthetic",
    source='the 3-minute tutorial "Batch Normalization" (its Keras dense network and model.summary())',
    statement=(
        "A Keras network Dense 64 and 32 (L2 0.01), each with BatchNormalization, ReLU and dropout 0.3 / 0.2, and a "
        "sigmoid output has 3,841 parameters, 3,649 trainable and 192 not (the moving statistics)."
    ),
    measured=(
        "normlab.summary of that network built by ModelSpec with Keras's conventions, and its training on the "
        "tutorial's synthetic data (20 uniform features, random labels; Adam 1e-3, batch 32, 100 epochs)"
    ),
    criterion="the three parameter counts equal the tutorial's; the training curve is shown, not judged",
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
