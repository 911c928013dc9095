"""placement: batch normalization before or after the activation.

A "Deep Learning" revision note on batch normalization: "The authors of the Batch Norm paper suggest to use it before the activation
function but François Chollet explained on its Keras Github that it was better to use
it after the activation function." Ioffe & Szegedy (2015, Sec. 3.2) normalize
``Wu + b`` because it is "more likely to have a symmetric, non-sparse distribution"
than the layer's input.

The claim tested is the seed's report of Chollet's advice: *after* is better. Here: the
3x100 MLP on MNIST-1D with BN before (``Linear -> BN -> act``) and after
(``Linear -> act -> BN``, the linear map keeping its bias) the activation, for ReLU and
for sigmoid; Adam (learning rate 1e-3, the Keras default), batch 60. The smallest
difference of test accuracy of interest is one percentage point (:data:`MEANINGFUL`).

For each activation, ``d`` = test accuracy after - before, with its interval ``[low,
high]`` (:mod:`normlab.lab.stats`); the words of the finding (:func:`finding`):

* *after is better*: the part is reproduced (``low > 0``, ``high >= 1 pp``);
* *before is better*: the mirror image (``high < 0``, ``low <= -1 pp``);
* *no meaningful difference*: ``-1 pp < low`` and ``high < 1 pp``;
* *after is not better*: ``high < 1 pp`` otherwise;
* *unclear*: the rest, where the interval reaches beyond 1 pp on the after side and the verdict needs more seeds.

The claim is reproduced when after is better for both activations; "before is better"
and "no meaningful difference" are both "not reproduced", and the finding says which.
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

MEANINGFUL = 0.01  # one percentage point of test accuracy
ACTIVATIONS = {"relu": "ReLU", "sigmoid": "sigmoid"}


def runs(profile: Profile) -> list[RunConfig]:
    steps = profile.pick(20, 1500, 4000)
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation=act, norm="bn", placement=placement),
            data=profile.data,
            optimizer="adam",
            lr=1e-3,
            batch_size=60,
            steps=steps,
            eval_every=steps // 10,
            seed=seed,
        )
        for act in ACTIVATIONS
        for placement in ("before", "after")
        for seed in profile.seeds
    ]


def finding(part: stats.Part) -> str:
    """The finding's words for one activation's decided part (see the module docstring)."""
    low, high, m = part.low, part.high, MEANINGFUL
    if part.verdict == stats.REPRODUCED:
        return "after is better"
    if high < 0 and low <= -m:
        return "before is better"
    if high < m and low > -m:
        return "no meaningful difference"
    return "after is not better" if high < m else "unclear"


def findings(verdict: stats.Verdict) -> dict:
    return {f"finding, {label}": finding(part) for label, part in zip(ACTIVATIONS.values(), verdict.parts)}


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.activation, c.model.placement))
    q = base.resolution(runs)
    figures = {"meaningful difference (test accuracy)": MEANINGFUL}
    for act, label in ACTIVATIONS.items():
        acc = {p: [r.result["final_test_accuracy"] for r in by[act, p]] for p in ("before", "after")}
        figures[f"test accuracy, {label}, BN before"] = stats.stat(acc["before"], q)
        figures[f"test accuracy, {label}, BN after"] = stats.stat(acc["after"], q)
    return figures


def parts(figures: dict):
    return [
        stats.compare(
            figures[f"test accuracy, {label}, BN after"],
            figures[f"test accuracy, {label}, BN before"],
            what=f"{label}: test accuracy after - before",
            smallest=MEANINGFUL,
        )
        for label in ACTIVATIONS.values()
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title="placement: 3x100 MLP, BN before or after the activation")
    by = base.group(runs, lambda c: (c.model.activation, c.model.placement))
    for ax, (act, label) in zip(axes, ACTIVATIONS.items()):
        for placement, style in (("before", "-"), ("after", "--")):
            rs = by[act, placement]
            plots.band(ax, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], f"BN {placement}", linestyle=style)
        ax.set(title=label, xlabel="training step", ylabel="test accuracy")
    plots.legend(axes[-1])
    return fig


CLAIM = Claim(
    name="placement",
    headline="BN works better after the activation than before it",
    source="a \"Deep Learning\" revision note (Ioffe & Szegedy 2015, Sec. 3.2, vs. F. Chollet's advice for Keras)",
    statement=(
        "Ioffe & Szegedy put BN before the activation; Chollet advises putting it after the activation, "
        "as it works better."
    ),
    measured=(
        "final test accuracy of the 3x100 MLP (Adam) with BN before vs. after the activation, for ReLU and "
        "for sigmoid"
    ),
    criterion=(
        f"for each activation, BN after beats BN before; smallest effect of interest: {MEANINGFUL * 100:g} percentage "
        "point of test accuracy (the smallest difference we call meaningful)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
    findings=findings,
)
