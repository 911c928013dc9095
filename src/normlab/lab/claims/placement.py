"""placement: batch normalization before or after the activation.

Seed 002: "The authors of the Batch Norm paper suggest to use it before the activation
function but François Chollet explained on its Keras Github that it was better to use
it after the activation function." Ioffe & Szegedy (2015, Sec. 3.2) normalize
``Wu + b`` because it is "more likely to have a symmetric, non-sparse distribution"
than the layer's input.

The claim tested is the seed's report of Chollet's advice: *after* is better. Here: the
3x100 MLP on MNIST-1D with BN before (``Linear -> BN -> act``) and after
(``Linear -> act -> BN``, the linear map keeping its bias) the activation, for ReLU and
for sigmoid; Adam (learning rate 1e-3, the Keras default), batch 60. A difference of
test accuracy below one percentage point is not a meaningful one (:data:`MEANINGFUL`).

For each activation, ``d`` = test accuracy after - before, judged by
``compare(after, before, min_effect=MEANINGFUL)``; the words of the finding:

* *after is better*: ``d - 2 se > 1 pp`` (the claim holds: reproduced);
* *before is better*: ``-d - 2 se > 1 pp``;
* *no meaningful difference*: ``|d| + 2 se <= 1 pp``: whichever is better, by less than 1 pp;
* *after is not better* / *unclear*: the rest, where the seeds' noise covers 1 pp on one
  side or on both.

The claim is reproduced for both activations, or not: after must be meaningfully better
for each (``base.combine``); "before is better" and "no meaningful difference" are both
"not reproduced", and the finding says which.
"""

from __future__ import annotations

from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import NOT_REPRODUCED, REPRODUCED, Claim, Profile, Run

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
        for seed in range(profile.seeds)
    ]


def _compare(after, before, act_label):
    return base.compare(after, before, min_effect=MEANINGFUL, what=f"{act_label}: test accuracy after - before")


def finding(after: list[float], before: list[float]) -> str:
    """The finding's words for one activation (see the module docstring)."""
    after_better = _compare(after, before, "").verdict
    before_better = _compare(before, after, "").verdict
    if after_better == REPRODUCED:
        return "after is better"
    if before_better == REPRODUCED:
        return "before is better"
    if after_better == NOT_REPRODUCED and before_better == NOT_REPRODUCED:
        return "no meaningful difference"
    return "after is not better" if after_better == NOT_REPRODUCED else "unclear"


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.activation, c.model.placement))
    figures = {"meaningful difference (test accuracy)": MEANINGFUL}
    for act, label in ACTIVATIONS.items():
        acc = {p: [r.result["final_test_accuracy"] for r in by[act, p]] for p in ("before", "after")}
        figures[f"test accuracy, {label}, BN before"] = base.stat(acc["before"])
        figures[f"test accuracy, {label}, BN after"] = base.stat(acc["after"])
        figures[f"finding, {label}"] = finding(acc["after"], acc["before"])
    return figures


def verdict(figures: dict):
    parts = []
    for label in ACTIVATIONS.values():
        v = _compare(
            figures[f"test accuracy, {label}, BN after"],
            figures[f"test accuracy, {label}, BN before"],
            label,
        )
        parts.append(base.Verdict(v.verdict, f"{v.explanation}: {figures[f'finding, {label}']}"))
    return base.combine(*parts)


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title="placement: 3x100 MLP, BN before or after the activation")
    by = base.group(runs, lambda c: (c.model.activation, c.model.placement))
    for ax, (act, label) in zip(axes, ACTIVATIONS.items()):
        for placement, style in (("before", "-"), ("after", "--")):
            rs = by[act, placement]
            plots.band(ax, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], f"BN {placement}", linestyle=style)
        ax.set(title=f"{label}: {figures[f'finding, {label}']}", xlabel="training step", ylabel="test accuracy")
        ax.legend(loc="lower right")
    return fig


CLAIM = Claim(
    name="placement",
    source="seed 002 (Ioffe & Szegedy 2015, Sec. 3.2, vs. F. Chollet's advice for Keras)",
    statement=(
        "Ioffe & Szegedy put BN before the activation; Chollet advises putting it after the activation, "
        "as it works better."
    ),
    measured=(
        "final test accuracy of the 3x100 MLP (Adam) with BN before vs. after the activation, for ReLU and "
        "for sigmoid"
    ),
    criterion=(
        f"for each activation, BN after beats BN before by more than {MEANINGFUL * 100:g} percentage point of test "
        "accuracy (the smallest difference we call meaningful) beyond 2 standard errors over seeds; "
        "'no meaningful difference' when |after - before| plus 2 standard errors is at most 1 point"
    ),
    runs=runs,
    summarize=summarize,
    verdict=verdict,
    plot=plot,
)
