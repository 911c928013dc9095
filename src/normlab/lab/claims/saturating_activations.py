"""saturating-activations: batch normalization lets a deep network of sigmoids train.

A blog post reviewing Ioffe & Szegedy with Keras (after Ioffe & Szegedy 2015, Sec. 3.3): a CNN of five blocks of two
3-wide convolutions (60 channels, 100 in the last block), max-pooling and dropout
0.15, with sigmoid or ReLU activations, with or without BN. "Sigmoid without batch
normalization: training gets stuck ... never achieves better performance than random
guessing"; with BN the same network "gets off the ground".

Here: that network in 1-D on MNIST-1D, Adam (learning rate 1e-3, batch 64), the four
combinations. Whether a network *trains* is read from its training loss (the mean over
the last logging interval): chance level is ``ln(classes)``. (Test accuracy is
reported too; in evaluation mode a deep sigmoid network with BN is far less accurate
than in training mode early on, because the running statistics lag behind the batch
statistics, see docs/claims.md.) A diverged run counts at chance level.
"""

from __future__ import annotations

import math

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

NEAR_CHANCE = 0.9  # "stays near chance": final training loss above 0.9 ln(classes)
TRAINS = 0.75  # "trains": final training loss below 0.75 ln(classes), a quarter of the way to a perfect fit
SMALLEST = 0.05  # beyond each threshold, as a fraction of the chance-level loss
COMBINATIONS = [("sigmoid", "none"), ("sigmoid", "bn"), ("relu", "none"), ("relu", "bn")]


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("cnn", depth=5, width=60, activation=act, norm=norm, dropout=0.15, final_width=100),
            data=profile.data,
            optimizer="adam",
            lr=1e-3,
            batch_size=64,
            steps=profile.pick(20, 400, 2000),
            eval_every=profile.pick(10, 50, 100),
            seed=seed,
        )
        for act, norm in COMBINATIONS
        for seed in profile.seeds
    ]


def _label(act: str, norm: str) -> str:
    return f"{act}, {'BN' if norm == 'bn' else 'no BN'}"


def final_loss(run: Run) -> float:
    if run.result["diverged"]:
        return math.log(run.result["classes"])
    return [v for v in run.result["train_loss"] if v is not None][-1]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.activation, c.model.norm))
    chance = math.log(runs[0].result["classes"])
    figures = {"chance-level loss ln(classes)": chance}
    for key in COMBINATIONS:
        figures[f"final training loss, {_label(*key)}"] = stats.stat([final_loss(r) for r in by[key]])
    for key in COMBINATIONS:
        figures[f"final test accuracy, {_label(*key)}"] = stats.stat([r.result["final_test_accuracy"] for r in by[key]], base.resolution(runs))
    return figures


def parts(figures: dict):
    chance = figures["chance-level loss ln(classes)"]
    return [
        stats.compare(
            figures["final training loss, sigmoid, no BN"],
            NEAR_CHANCE * chance,
            what=f"sigmoid without BN: final training loss minus {NEAR_CHANCE} x chance level",
            smallest=SMALLEST * chance,
        ),
        stats.compare(
            TRAINS * chance,
            figures["final training loss, sigmoid, BN"],
            what=f"sigmoid with BN: {TRAINS} x chance level minus final training loss",
            smallest=SMALLEST * chance,
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title="saturating-activations: the blog post's CNN (5 blocks) on MNIST-1D")
    for (act, norm), rs in sorted(base.group(runs, lambda c: (c.model.activation, c.model.norm)).items()):
        style = {"linestyle": "-" if act == "sigmoid" else "--"}  # the colour is the normalization's
        steps = rs[0].result["step"]
        plots.band(axes[0], steps[1:], [r.result["train_loss"][1:] for r in rs], _label(act, norm), **style)
        plots.band(axes[1], steps, [r.result["test_accuracy"] for r in rs], _label(act, norm), **style)
    axes[0].axhline(figures["chance-level loss ln(classes)"], color="grey", linestyle=":", label="chance")
    axes[0].set(xlabel="training step", ylabel="training loss")
    axes[1].set(xlabel="training step", ylabel="test accuracy (eval mode)")
    plots.legend(axes[1], *axes[0].get_legend_handles_labels())
    return fig


CLAIM = Claim(
    name="saturating-activations",
    headline="BN lets a deep sigmoid network train where without it training stays at chance",
    source="a blog post reviewing Ioffe & Szegedy with a Keras CNN on CIFAR-100 (after their Sec. 3.3)",
    statement=(
        "A deep sigmoid CNN without BN stays at chance; with BN it trains. "
        "(ReLU networks train either way, better with BN.)"
    ),
    measured=(
        "final training loss of the seed's 5-block CNN (1-D, MNIST-1D, Adam), "
        "{sigmoid, ReLU} x {BN, no BN}"
    ),
    criterion=(
        f"both: sigmoid without BN ends above {NEAR_CHANCE} x chance-level loss, and sigmoid with BN ends below "
        f"{TRAINS} x chance level; smallest effect of interest: {SMALLEST:g} x chance level beyond each threshold"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
