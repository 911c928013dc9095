"""bn-only-training: training only batch norm's scale and shift, on frozen random weights, goes far.

Frankle, Schwab & Morcos 2020 ("Training BatchNorm and Only BatchNorm: On the
Expressive Power of Random Features in CNNs", ICLR 2021): with every weight frozen at
its random initialization and only BN's gamma and beta trained, deep ResNets reach 82%
on CIFAR-10 (ResNet-866) and 32% top-5 on ImageNet, "far higher than when training an
equivalent number of randomly chosen parameters elsewhere in the network" (their
baseline: two random weights per channel); and BN does it "in part by naturally
learning to disable around a third of the random features": many gammas end near zero.

Here: the CIFAR-100 blog post's CNN in 1-D (three blocks of two 3-wide convolutions with 32
channels, BN and ReLU, max-pooling between blocks) on MNIST-1D, Adam (learning rate
1e-2, batch 60), trained three ways (``RunConfig.trainable``): everything; only the
BN parameters (gamma and beta: 2 x 32 x 6 = 384 numbers; the classifier stays frozen
too); and as many weights chosen at random, two per output channel of each
convolution, with BN's gamma and beta frozen at 1 and 0. The measure ``gammas``
records every gamma at the end.
"""

from __future__ import annotations

import numpy as np

from ..models import ModelSpec
from ..train import RunConfig
from .. import stats
from . import base
from .base import Claim, Profile, Run

TRAINABLE = {"norm": "BN only", "random": "2 random weights per channel", "all": "all parameters"}
FAR_ABOVE = 2.0  # "far above chance": a test accuracy above twice chance
SMALLEST = 0.01  # one percentage point of test accuracy, for both parts
THRESHOLDS = (0.01, 0.1)  # |gamma| below these counts as near zero
SPEC = ModelSpec("cnn", depth=3, width=32, activation="relu", norm="bn", final_width=32)


def norm_parameters(spec: ModelSpec) -> int:
    """The number of BN parameters of the cnn ``spec`` (two per channel of each convolution):
    what ``trainable="norm"`` trains, and ``"random"`` as many."""
    return 2 * 2 * ((spec.depth - 1) * spec.width + spec.final_width)


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            SPEC,
            data=profile.data,
            optimizer="adam",
            lr=1e-2,
            batch_size=60,
            steps=profile.pick(30, 1000, 3000),
            eval_every=profile.pick(10, 100, 300),
            seed=seed,
            measures=("gammas",),
            trainable=trainable,
        )
        for trainable in TRAINABLE
        for seed in profile.seeds
    ]


def _gammas(run: Run) -> np.ndarray:
    return np.abs(np.asarray(run.result["measures"]["gammas"]["value"][0], dtype=float))


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.trainable)
    chance = 1 / runs[0].result["classes"]
    figures: dict = {"chance": chance, "trained parameters (BN only; random)": norm_parameters(runs[0].config.model)}
    for key, label in TRAINABLE.items():
        figures[f"final test accuracy, {label}"] = stats.stat([r.result["final_test_accuracy"] for r in by[key]], base.resolution(runs))
    for key in ("norm", "all"):
        for t in THRESHOLDS:
            figures[f"fraction of |gamma| < {t:g}, {TRAINABLE[key]}"] = stats.stat([(_gammas(r) < t).mean() for r in by[key]])
    return figures


def parts(figures: dict):
    only = figures[f"final test accuracy, {TRAINABLE['norm']}"]
    return [
        stats.compare(
            only, FAR_ABOVE * figures["chance"], smallest=SMALLEST, what=f"test accuracy of BN-only training minus {FAR_ABOVE:g}x chance"
        ),
        stats.compare(
            only, figures[f"final test accuracy, {TRAINABLE['random']}"], smallest=SMALLEST, what="test accuracy, BN only minus random weights"
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (curves, hist) = plots.figure(2, title="bn-only-training: CNN (6 convolutions x 32 channels, BN) on MNIST-1D")
    by = base.group(runs, lambda c: c.trainable)
    bn = plots.COLORS["bn"]  # every network here is a BN network: what is trained is told by the line style
    lines = {"norm": "-", "random": ":", "all": "--"}
    for key, label in TRAINABLE.items():
        plots.band(curves, by[key][0].result["step"], [r.result["test_accuracy"] for r in by[key]], label, color=bn, linestyle=lines[key])
    curves.axhline(figures["chance"], color="grey", linestyle=":", label="chance")
    curves.set(xlabel="training step", ylabel="test accuracy")
    magnitudes = {key: np.concatenate([_gammas(r) for r in by[key]]) for key in ("norm", "all")}
    low = min(THRESHOLDS) / 10
    bins = np.geomspace(low, max(low * 10, max(v.max() for v in magnitudes.values())), 40)
    for key, values in magnitudes.items():
        filled = {"histtype": "stepfilled", "alpha": 0.5} if key == "norm" else {"histtype": "step", "linestyle": lines[key]}
        hist.hist(np.clip(values, low, None), bins=bins, color=bn, label=TRAINABLE[key], **filled)
    for t in THRESHOLDS:
        hist.axvline(t, color="grey", linestyle=":")
    hist.set(xscale="log", xlabel=f"|gamma| at the end, all seeds (below {low:g} drawn at {low:g})", ylabel="channels")
    hist.set_title("BN scales after training; dotted: " + ", ".join(f"{t:g}" for t in THRESHOLDS))
    plots.legend(hist, *curves.get_legend_handles_labels())
    return fig


CLAIM = Claim(
    name="bn-only-training",
    headline="Training only BN's scale and shift takes a random network far above chance",
    source="Frankle, Schwab & Morcos 2020 (ICLR 2021), Figs. 2, 6",
    statement=(
        "Training only BN's gamma and beta of a deep network with frozen random weights reaches accuracy far above "
        "chance, and above training the same number of randomly chosen other parameters; many gammas end near zero."
    ),
    measured=(
        "a 1-D CNN (6 convolutions x 32 channels, BN, ReLU) on MNIST-1D, Adam: final test accuracy training only "
        "BN (384 parameters), 384 random weights (2 per channel), or everything; the fraction of |gamma| < 0.01, 0.1"
    ),
    criterion=(
        f"both: BN-only training ends above {FAR_ABOVE:g}x chance, and above training the same number of random "
        f"weights; smallest effect of interest of each: {SMALLEST * 100:g} percentage point (the gamma fractions are "
        "reported, not judged)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
