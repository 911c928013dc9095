"""stable-distributions: with batch normalization the inputs to a sigmoid keep their distribution.

Ioffe & Szegedy 2015, Fig. 1(b, c): the 15th, 50th and 85th percentiles of the input
to a typical sigmoid of the last hidden layer, over training. Without BN they move
in mean and spread ("internal covariate shift"); with BN they stay put.

Here: the runs of faster-training (the same 3x100 sigmoid MLP, with and without BN),
whose probe records those three percentiles over a fixed batch of 500 test samples,
seen as in training, for the first ten units of the last hidden layer. The drift of a
run is the range each percentile sweeps over training (max - min over the logged
steps, from step 0), averaged over the three percentiles and the ten units. The
smallest effect of interest is half a unit of the sigmoid's input (:data:`SMALLEST`):
sigmoid(0.5) - sigmoid(0) is 0.12, a visible move of the operating point.
"""

from __future__ import annotations

import numpy as np

from .. import stats
from . import base
from .base import Claim, Run
from .faster_training import ioffe_runs

PROBE = "last_activation_input"
SMALLEST = 0.5  # drift removed by BN, in units of the sigmoid's input


def drift(run: Run) -> float:
    p = np.asarray(run.result["probes"][PROBE], dtype=float)  # (logged step, unit, percentile)
    return float((p.max(0) - p.min(0)).mean())


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.model.norm)
    d = {n: stats.stat([drift(r) for r in rs]) for n, rs in by.items()}
    return {
        "drift of the percentiles, BN": d["bn"],
        "drift of the percentiles, no BN": d["none"],
        "ratio (no BN / BN)": base.ratio(d["none"]["mean"], d["bn"]["mean"]),
    }


def parts(figures: dict):
    return [
        stats.compare(
            figures["drift of the percentiles, no BN"],
            figures["drift of the percentiles, BN"],
            what="drift removed by BN (no BN - BN)",
            smallest=SMALLEST,
        )
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title="stable-distributions: input to unit 0 of the last sigmoid layer (seed 0)")
    for ax, (norm, rs) in zip(axes, sorted(base.group(runs, lambda c: c.model.norm).items(), reverse=True)):
        r = rs[0]
        p = np.asarray(r.result["probes"][PROBE], dtype=float)[:, 0, :]
        title = "no BN" if norm == "none" else "BN"
        ax.plot(r.result["step"], p[:, 1], label="50th percentile", color=plots.color(title))
        ax.fill_between(r.result["step"], p[:, 0], p[:, 2], alpha=0.25, label="15th to 85th", color=plots.color(title))
        ax.set(title=title, xlabel="training step", ylabel="sigmoid input")
    plots.legend(axes[-1])
    lo = min(a.get_ylim()[0] for a in axes)
    hi = max(a.get_ylim()[1] for a in axes)
    for a in axes:
        a.set_ylim(lo, hi)
    return fig


CLAIM = Claim(
    name="stable-distributions",
    headline="BN keeps the distribution of a layer's inputs more stable during training",
    source="Ioffe & Szegedy 2015, Fig. 1(b, c)",
    statement=(
        "Without BN the distribution of a sigmoid's input changes over training; "
        "with BN it is much more stable."
    ),
    measured=(
        "the range swept over training by the 15th/50th/85th percentiles of the inputs to the last hidden "
        "layer's sigmoids (10 units, fixed probe batch), 3x100 sigmoid MLP with and without BN"
    ),
    criterion=f"the drift is smaller with BN; smallest effect of interest: {SMALLEST:g} (units of the sigmoid's input)",
    runs=ioffe_runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
