"""init-robustness: with batch normalization, training depends much less on the initial weights.

Seeds 000 and 001: "with batch norm the network becomes more robust to different
initialization schemes"; BN "reduces the sensitivity to weight initialisation". The
reason is in the math: a linear layer followed by BN gives the same output for weights
``W`` and ``a W`` (any ``a > 0``), so the scale of its initial weights cannot matter to
the forward pass (it changes only the effective step size, ``lr / a^2``).

Here: a 3x100 ReLU MLP with and without BN (before the activation) on MNIST-1D, plain
SGD (learning rate 0.1, batch 60), with every weight matrix of the default
initialization (PyTorch's, the classifier's too) multiplied by a scale from 0.01 to 100
in decades. A run that diverges counts at chance accuracy: its remains (NaN weights)
would score 0, which would overstate what a bad scale costs.

The *sensitivity* of a network, per seed, is the share of what it can learn that the
worst scale costs: ``(best - worst) / (best - chance)`` over the five scales' final test
accuracies (0: every scale as good as the best; 1: the worst scale at chance). The plain
range ``best - worst`` is reported too, but it cannot be the criterion: it calls a
network that fails at every scale but one robust, because its range is capped by its
best accuracy minus chance (docs/claims.md has the run that showed it). The smallest
effect of interest is 0.05 of sensitivity (:data:`SMALLEST`): a twentieth of what the
network learns.
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

SCALES = (0.01, 0.1, 1.0, 10.0, 100.0)
NORMS = {"bn": "BN", "none": "no BN"}
SMALLEST = 0.05  # sensitivity removed by BN


def runs(profile: Profile) -> list[RunConfig]:
    steps = profile.pick(20, 1000, 3000)
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="relu", norm=norm, init_scale=scale),
            data=profile.data,
            optimizer="sgd",
            lr=0.1,
            batch_size=60,
            steps=steps,
            eval_every=steps // 10,
            seed=seed,
        )
        for norm in NORMS
        for scale in SCALES
        for seed in profile.seeds
    ]


def final_accuracy(run: Run) -> float:
    """The final test accuracy; a diverged run at chance."""
    return 1 / run.result["classes"] if run.result["diverged"] else run.result["final_test_accuracy"]


def sensitivity(best: float, worst: float, chance: float) -> float:
    """The share of what a network can learn above chance that its worst initialization loses (1 if it learns nothing)."""
    return (best - worst) / (best - chance) if best > chance else 1.0


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.norm, c.model.init_scale))
    seeds = range(len(by["bn", SCALES[0]]))
    acc = {(n, s): [final_accuracy(r) for r in by[n, s]] for n in NORMS for s in SCALES}
    chance = 1 / runs[0].result["classes"]
    q = base.resolution(runs)
    figures = {}
    for n, label in NORMS.items():
        best = [max(acc[n, s][i] for s in SCALES) for i in seeds]
        worst = [min(acc[n, s][i] for s in SCALES) for i in seeds]
        figures[f"sensitivity (best - worst) / (best - chance), {label}"] = stats.stat(
            [sensitivity(b, w, chance) for b, w in zip(best, worst)]
        )
        figures[f"range of final test accuracy (best - worst), {label}"] = stats.stat([b - w for b, w in zip(best, worst)], q)
    for n, label in NORMS.items():
        figures[f"final test accuracy by init scale, {label}"] = {str(s): stats.stat(acc[n, s], q) for s in SCALES}
        figures[f"runs that diverged, {label}"] = sum(r.result["diverged"] is not None for s in SCALES for r in by[n, s])
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

    fig, (ax,) = plots.figure(title="init-robustness: 3x100 ReLU MLP, weights x scale")
    for label in NORMS.values():
        f = figures[f"final test accuracy by init scale, {label}"]
        per_seed = [list(v) for v in zip(*(f[str(s)]["values"] for s in SCALES))]
        plots.band(ax, SCALES, per_seed, label, marker="o")
    ax.axhline(1 / runs[0].result["classes"], color="grey", linestyle=":", label="chance")
    ax.set(xscale="log", xlabel="initial weights: scale x PyTorch's default", ylabel="final test accuracy")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="init-robustness",
    headline="BN makes training less sensitive to the scale of the initial weights",
    source='the tutorials "Batch Normalization" and "Batch Normalization in Deep Learning" (after Ioffe & Szegedy 2015, Sec. 3.3)',
    statement="Batch normalization makes training much less sensitive to the initialization of the weights.",
    measured=(
        "final test accuracy of the 3x100 ReLU MLP, with and without BN (SGD 0.1), with all initial weights "
        "scaled by 0.01, 0.1, 1, 10, 100; per seed, the sensitivity: the share of the best accuracy's margin over "
        "chance that the worst scale loses, (best - worst) / (best - chance)"
    ),
    criterion=f"the sensitivity is smaller with BN than without; smallest effect of interest: {SMALLEST:g}",
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
