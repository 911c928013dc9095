"""placement: batch normalization before or after the activation.

The short revision note on batch normalization and internal covariate shift (a "Deep
Learning" revision page): "The authors of the Batch Norm paper suggest to use it before
the activation function but François Chollet explained on its Keras Github that it was
better to use it after the activation function." Ioffe & Szegedy (2015, Sec. 3.2)
normalize ``Wu + b`` because it is "more likely to have a symmetric, non-sparse
distribution" than the layer's input.

The claim tested is the note's report of Chollet's advice: *after* is better. A
placement is better when the network trains better with it, each placement given its
own learning rate, as a practitioner would tune it. Here:

* two networks on MNIST-1D: the 3x100 MLP and a CNN of two blocks of 1-D convolutions
  (:data:`NETWORKS`), with BN before (``linear -> BN -> act``) or after (``linear ->
  act -> BN``, the linear map keeping its bias) the activation, for ReLU and sigmoid;
* Adam (the Keras default optimizer), batch 60, at each rate of :data:`RATES` (the
  Keras default 1e-3 and half a decade either side);
* two budgets, 600 and 1800 steps (full: 1500 and 4500; tiny: 10 and 20): the same
  runs, read at their first log and at their end, because the sign of the difference
  can depend on how long one trains;
* per network, activation, placement and budget, the learning rate with the best mean
  *validation* accuracy at that budget (:func:`normlab.lab.claims.base.tune`); the
  verdict compares the *test* accuracies at the rates so chosen.

One part per network, activation and budget: ``d`` = test accuracy after - before,
smallest effect of interest one percentage point (:data:`MEANINGFUL`). The words of each
part's finding (:func:`finding`):

* *after is better*: the part is reproduced (``low > 0``, ``high >= 1 pp``);
* *before is better*: the mirror image (``high < 0``, ``low <= -1 pp``);
* *no meaningful difference*: ``-1 pp < low`` and ``high < 1 pp``;
* *after is not better*: ``high < 1 pp`` otherwise;
* *unclear*: the rest, where the interval reaches beyond 1 pp on the after side and the verdict needs more seeds.

The claim is reproduced when after is better in every part; "before is better" and "no
meaningful difference" are both "not reproduced", and the finding says which.
"""

from __future__ import annotations

from dataclasses import replace

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

MEANINGFUL = 0.01  # one percentage point of test accuracy
ACTIVATIONS = {"relu": "ReLU", "sigmoid": "sigmoid"}
NETWORKS = {  # label -> the network, but for its activation and placement
    "MLP": ModelSpec("mlp", depth=3, width=100, norm="bn"),
    "CNN": ModelSpec("cnn", depth=2, width=32, final_width=32, norm="bn"),
}
RATES = (3e-4, 1e-3, 3e-3)  # Adam's; the Keras default in the middle
PLACEMENTS = ("before", "after")


QUICK_CNN_WIDTH = 16  # the quick profile's CNN: a quarter of the convolutions' work, for the minutes the profile has


def runs(profile: Profile) -> list[RunConfig]:
    short, long = profile.pick((10, 20), (600, 1800), (1500, 4500))
    networks = [replace(spec, width=QUICK_CNN_WIDTH, final_width=QUICK_CNN_WIDTH)
                if profile.name == "quick" and spec.kind == "cnn" else spec for spec in NETWORKS.values()]
    return [
        RunConfig(
            replace(spec, activation=act, placement=placement),
            data=profile.data,
            optimizer="adam",
            lr=lr,
            batch_size=60,
            steps=long,
            eval_every=short,  # the short budget is the first log, the long one the last
            seed=seed,
        )
        for spec in networks
        for act in ACTIVATIONS
        for placement in PLACEMENTS
        for lr in RATES
        for seed in profile.seeds
    ]


def _arm(config: RunConfig) -> tuple[str, str, str]:
    network = next(label for label, spec in NETWORKS.items() if spec.kind == config.model.kind)
    return network, ACTIVATIONS[config.model.activation], config.model.placement


def _cells(budgets) -> list[tuple[str, str, int]]:
    """``(network, activation, budget)`` of every part, in report order."""
    return [(n, a, b) for n in NETWORKS for a in ACTIVATIONS.values() for b in budgets]


def _name(network: str, activation: str, budget: int) -> str:
    return f"{network}, {activation}, {budget} steps"


def finding(part: stats.Part) -> str:
    """The finding's words for one part (see the module docstring)."""
    low, high, m = part.low, part.high, MEANINGFUL
    if part.verdict == stats.REPRODUCED:
        return "after is better"
    if high < 0 and low <= -m:
        return "before is better"
    if high < m and low > -m:
        return "no meaningful difference"
    return "after is not better" if high < m else "unclear"


def findings(verdict: stats.Verdict) -> dict:
    return {f"finding, {p.what.split(':')[0]}": finding(p) for p in verdict.parts}


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, _arm)
    q, q_val = base.resolution(runs), 1 / runs[0].result["val_samples"]
    c = runs[0].config
    figures: dict = {
        "meaningful difference (test accuracy)": MEANINGFUL,
        "learning rates (Adam)": list(RATES),
        "budgets (steps)": [c.eval_every, c.steps],  # the runs' first log and their end
    }
    for network, act, budget in _cells(figures["budgets (steps)"]):
        name = _name(network, act, budget)
        for placement in PLACEMENTS:
            arm = by[network, act, placement]
            per_rate = base.group(arm, lambda c: c.lr)
            figures[f"validation accuracy by learning rate, {name}, BN {placement}"] = {
                f"{lr:g}": stats.stat([base.accuracy(r, "val", budget) for r in per_rate[lr]], q_val) for lr in RATES
            }
            lr, chosen = base.tune(arm, at=budget)
            figures[f"tuned learning rate, {name}, BN {placement}"] = lr
            figures[f"test accuracy, {name}, BN {placement}"] = stats.stat([base.accuracy(r, "test", budget) for r in chosen], q)
    edge = [k for k, v in figures.items() if k.startswith("tuned learning rate") and v in (RATES[0], RATES[-1])]
    figures["tuned at an end of the rates (the best may lie beyond)"] = len(edge)
    return figures


def parts(figures: dict):
    cells = [_name(*cell) for cell in _cells(figures["budgets (steps)"])]
    return [
        stats.compare(
            figures[f"test accuracy, {name}, BN after"],
            figures[f"test accuracy, {name}, BN before"],
            what=f"{name}: test accuracy after - before, each at its tuned rate",
            smallest=MEANINGFUL,
        )
        for name in cells
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    cells = _cells(figures["budgets (steps)"])
    fig, axes = plots.figure(len(cells) // 2, title="placement: BN before or after the activation, each at its "
                             "learning rate tuned on the validation split (test accuracy, mean ± std over seeds)", width=3.6)
    by = base.group(runs, _arm)
    for ax, (network, act, _) in zip(axes, cells[::2]):
        for placement, style in (("before", "-"), ("after", "--")):
            lr = figures[f"tuned learning rate, {_name(network, act, runs[0].config.steps)}, BN {placement}"]
            rs = [r for r in by[network, act, placement] if r.config.lr == lr]
            plots.band(ax, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], f"BN {placement} (lr {lr:g})", linestyle=style)
        ax.axvline(runs[0].config.eval_every, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{network}, {act}", xlabel="training step", ylabel="test accuracy")
        ax.legend(loc="lower right", fontsize="small")
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
        "test accuracy of the 3x100 MLP and a 2-block CNN (Adam at 3e-4, 1e-3, 3e-3) with BN before vs. after the "
        "activation, for ReLU and sigmoid, after a short and a long budget; each placement at the learning rate with "
        "its best validation accuracy at that budget"
    ),
    criterion=(
        f"for each network, activation and budget, BN after beats BN before; smallest effect of interest: "
        f"{MEANINGFUL * 100:g} percentage point of test accuracy (the smallest difference we call meaningful)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
    findings=findings,
)
