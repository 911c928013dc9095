"""init-robustness: with batch normalization, the choice of initialization scheme matters less.

"With batch norm the network becomes more robust to different initialization schemes
and learning rates" (a revision note on batch normalization and internal covariate
shift); BN "reduces the sensitivity to weight initialisation ... This allows for more
flexibility in choosing weight initialisation strategies" ("Batch Normalization in Deep
Learning", an overview article); Ioffe & Szegedy 2015 (abstract): BN "allows us to use
much higher learning rates and be less careful about initialization".

Here: a 6x100 ReLU MLP with and without BN (before the activation), plain SGD (batch
60), initialized by each of four standard schemes (:data:`normlab.lab.models.INITS`):
torch's default (uniform, variance ``1 / (3 fan_in)``), LeCun's (normal, ``1 / fan_in``),
Glorot's (uniform, ``2 / (fan_in + fan_out)``) and He's (normal, ``2 / fan_in``), biases
at 0 but for torch's default. Each network and scheme trains at each learning rate of
:data:`LRS` and is judged at the rate with the best mean validation accuracy
(:func:`~normlab.lab.claims.base.tune`): the choice a practitioner makes for each
scheme, so that no scheme loses only because one rate suits another better. A run that
diverges counts at chance accuracy (its NaN remains would score 0). Six layers, not the
lab's usual three: an initialization's scale compounds with depth, and in three layers
every scheme trains the plain network about as well as any other, so that the
sensitivity of either network is little more than the range of four noisy accuracies.

The *sensitivity* of a network, per seed, is the share of what it can learn above
chance that its worst scheme costs: ``(best - worst) / (best - chance)`` over the four
schemes' final test accuracies (0: every scheme as good as the best; 1: the worst at
chance). The plain range ``best - worst`` is reported too; it alone would call a
network robust that fails under every scheme. The smallest effect of interest is 0.02
of sensitivity (:data:`SMALLEST`): a fiftieth of what the network learns, about one
percentage point of accuracy here.
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

SCHEMES = {"torch": "torch's default", "lecun": "LeCun", "glorot": "Glorot", "he": "He"}  # every key of models.INITS
NORMS = {"bn": "BN", "none": "no BN"}
# Half-decades: in the pilot (5 seeds from 5000, validation split, 0.03 to 3) every arm trained best at
# 0.3 or 1, and worse at 0.1 and at 3 (the plain network diverged there): the grid brackets every best rate.
LRS = (0.1, 0.3, 1.0)
DEPTH = 6  # hidden layers: deep enough for the schemes to differ without BN (module docstring)
SMALLEST = 0.02  # sensitivity removed by BN


def runs(profile: Profile) -> list[RunConfig]:
    steps = profile.pick(20, 1000, 3000)
    return [
        RunConfig(
            ModelSpec("mlp", depth=DEPTH, width=100, activation="relu", norm=norm, init=init),
            data=profile.data,
            optimizer="sgd",
            lr=lr,
            batch_size=60,
            steps=steps,
            eval_every=steps // 10,
            seed=seed,
        )
        for norm in NORMS
        for init in SCHEMES
        for lr in LRS
        for seed in profile.seeds
    ]


def final_accuracy(run: Run, split: str = "test") -> float:
    """The final accuracy on ``split`` ("test" or "val"); a diverged run at chance."""
    return 1 / run.result["classes"] if run.result["diverged"] else run.result[f"final_{split}_accuracy"]


def sensitivity(best: float, worst: float, chance: float) -> float:
    """The share of what a network can learn above chance that its worst initialization loses (1 if it learns nothing)."""
    return (best - worst) / (best - chance) if best > chance else 1.0


def summarize(runs: list[Run]) -> dict:
    arms = {k: base.tune(rs) for k, rs in base.group(runs, lambda c: (c.model.norm, c.model.init)).items()}
    seeds = range(len(arms["bn", "torch"][1]))
    acc = {k: [final_accuracy(r) for r in rs] for k, (_, rs) in arms.items()}
    chance = 1 / runs[0].result["classes"]
    q = base.resolution(runs)
    figures = {}
    for n, label in NORMS.items():
        best = [max(acc[n, s][i] for s in SCHEMES) for i in seeds]
        worst = [min(acc[n, s][i] for s in SCHEMES) for i in seeds]
        figures[f"sensitivity (best - worst) / (best - chance), {label}"] = stats.stat(
            [sensitivity(b, w, chance) for b, w in zip(best, worst)]
        )
        figures[f"range of final test accuracy (best - worst scheme), {label}"] = stats.stat([b - w for b, w in zip(best, worst)], q)
    for n, label in NORMS.items():
        figures[f"final test accuracy by scheme, {label}"] = {SCHEMES[s]: stats.stat(acc[n, s], q) for s in SCHEMES}
        figures[f"learning rate chosen on the validation split, {label}"] = {SCHEMES[s]: arms[n, s][0] for s in SCHEMES}
        figures[f"runs that diverged at the chosen rates, {label}"] = sum(r.result["diverged"] is not None for s in SCHEMES for r in arms[n, s][1])
    return figures


def parts(figures: dict):
    return [
        stats.compare(
            figures["sensitivity (best - worst) / (best - chance), no BN"],
            figures["sensitivity (best - worst) / (best - chance), BN"],
            what="sensitivity removed by BN (no BN - BN)",
            smallest=SMALLEST,
        )
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (ax,) = plots.figure(title=f"init-robustness: {DEPTH}x100 ReLU MLP, each scheme at its best learning rate (validation)")
    names = list(SCHEMES.values())
    for i, label in enumerate(NORMS.values()):
        f = figures[f"final test accuracy by scheme, {label}"]
        rates = figures[f"learning rate chosen on the validation split, {label}"]
        x = [j + (i - 0.5) * 0.3 for j in range(len(names))]
        ax.bar(x, [f[s]["mean"] for s in names], width=0.3, yerr=[f[s]["std"] for s in names], capsize=3, label=label)
        for xi, s in zip(x, names):
            top = f[s]["mean"] + f[s]["std"]  # above the error bar, not across it
            ax.annotate(f"lr {rates[s]:g}", (xi, top), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.axhline(1 / runs[0].result["classes"], color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(names)), names)
    ax.set(xlabel="initialization scheme", ylabel="final test accuracy (mean ± std)")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="init-robustness",
    headline="BN makes training less sensitive to the choice of initialization scheme",
    source=(
        'the revision note on batch normalization and internal covariate shift; "Batch Normalization in Deep Learning" '
        "(an overview article); Ioffe & Szegedy 2015, abstract"
    ),
    statement="With batch normalization, training is much less sensitive to the choice of initialization scheme.",
    measured=(
        f"final test accuracy of the {DEPTH}x100 ReLU MLP with and without BN under torch's default, LeCun, Glorot and He "
        "initialization, each at its learning rate of best validation accuracy (SGD at 0.1, 0.3 or 1); per seed, the "
        "sensitivity (best - worst) / (best - chance) over the four schemes"
    ),
    criterion=f"the sensitivity is smaller with BN than without; smallest effect of interest: {SMALLEST:g}",
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
