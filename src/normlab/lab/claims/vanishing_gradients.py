"""vanishing-gradients: batch normalization keeps gradients from vanishing or exploding through depth.

The 3-minute tutorial "Batch Normalization" lists among BN's benefits: "Prevents
vanishing/exploding gradients"; "Batch Normalization in Deep Learning" (the long
overview) says BN "mitigates vanishing/exploding gradients", and the blog post reviewing
Ioffe and Szegedy names networks "with saturable nonlinearities (sigmoid, tanh, etc)".
Vanishing or exploding gradients are gradients whose size changes by a factor at every
layer, so that layers far from the loss get far smaller (or larger) updates than the
last one.

Here: a deep network of saturating units, 20 hidden layers of 100 sigmoids, with BN
(before each sigmoid) and without, SGD. At initialization and at every log, the measure
``gradient_norms`` takes the Frobenius norm of the loss's gradient with respect to the
weight of every layer (the 20 hidden ones and the classifier) on the next training
batch; the *spread* of a log is ``log10(largest / smallest)`` of those norms: how many
decades separate the layer that learns fastest from the slowest.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import stats
from ..measures import TrainingStep, measure
from ..models import WEIGHTED, ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

DEPTH, WIDTH = 20, 100
SMALLEST = 1.0  # smallest effect of interest: one decade (a factor of 10) less spread with BN
FLOOR = 1e-38  # a gradient norm of 0 counts as this (float32's smallest normal number): a finite spread
COLORS = {"bn": "C0", "none": "C1"}


def layer_gradient_norms(model: nn.Module, loss: torch.Tensor) -> list[float]:
    """``||dL/dW||`` (Frobenius) for the weight of every linear and convolution layer, in the model's order."""
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHTED)]
    return [float(g.norm()) for g in torch.autograd.grad(loss, weights, allow_unused=True, materialize_grads=True)]


def spread(norms: list[float]) -> float:
    """``log10(max / min)`` of gradient norms (a norm of 0 counted as :data:`FLOOR`): decades between layers."""
    floored = [max(n, FLOOR) for n in norms]
    return math.log10(max(floored) / min(floored))


@measure("gradient_norms")
def gradient_norms(step: TrainingStep) -> list[float]:
    """:func:`layer_gradient_norms` of the training loss on this batch, the model as in training."""
    return layer_gradient_norms(step.model, step.loss())


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("mlp", depth=DEPTH, width=WIDTH, activation="sigmoid", norm=norm),
            data=profile.data,
            optimizer="sgd",
            lr=0.1,
            batch_size=60,
            steps=profile.pick(20, 100, 2000),
            eval_every=profile.pick(10, 20, 200),
            seed=seed,
            measures=("gradient_norms",),
        )
        for norm in ("bn", "none")
        for seed in profile.seeds
    ]


def spreads(run: Run) -> tuple[list[int], list[float]]:
    m = run.result["measures"]["gradient_norms"]
    return m["step"], [spread(norms) for norms in m["value"]]


def summarize(runs: list[Run]) -> dict:
    figures: dict = {}
    by = base.group(runs, lambda c: c.model.norm)
    labels = {"bn": "BN", "none": "no BN"}
    for norm, rs in by.items():
        figures[f"spread at initialization (decades), {labels[norm]}"] = stats.stat([spreads(r)[1][0] for r in rs])
    for norm, rs in by.items():
        figures[f"spread over training (mean after step 0, decades), {labels[norm]}"] = stats.stat(
            [float(np.mean(spreads(r)[1][1:])) for r in rs]
        )
    for norm, rs in by.items():
        first = [r.result["measures"]["gradient_norms"]["value"][0] for r in rs]
        figures[f"gradient norm of the first / last layer at initialization, {labels[norm]}"] = stats.stat(
            [max(v[0], FLOOR) / max(v[-1], FLOOR) for v in first]
        )
    for norm, rs in by.items():
        figures[f"final test accuracy, {labels[norm]}"] = stats.stat([r.result["final_test_accuracy"] for r in rs])
    return figures


def parts(figures: dict) -> list[stats.Comparison]:
    return [
        stats.compare(
            figures[f"{when}, no BN"],
            figures[f"{when}, BN"],
            what=f"{when.split(' (')[0]}: decades of spread removed by BN (no BN - BN)",
            smallest=SMALLEST,
            unit="decades",
        )
        for when in ("spread at initialization (decades)", "spread over training (mean after step 0, decades)")
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(2, title=f"vanishing-gradients: {DEPTH}x{WIDTH} sigmoid MLP, SGD 0.1 (mean ± std over seeds)")
    labels = {"bn": "BN", "none": "no BN"}
    for norm, rs in base.group(runs, lambda c: c.model.norm).items():
        values = [r.result["measures"]["gradient_norms"]["value"] for r in rs]
        layers = np.arange(1, len(values[0][0]) + 1)
        at_init = [np.log10(np.maximum(v[0], FLOOR)) for v in values]
        at_end = [np.log10(np.maximum(v[-1], FLOOR)) for v in values]
        plots.band(axes[0], layers, at_init, f"{labels[norm]}, initialization", color=COLORS[norm])
        plots.band(axes[0], layers, at_end, f"{labels[norm]}, last log", color=COLORS[norm], linestyle="--")
        steps = rs[0].result["measures"]["gradient_norms"]["step"]
        plots.band(axes[1], steps, [spreads(r)[1] for r in rs], labels[norm], color=COLORS[norm])
    axes[0].set(xlabel="layer (1: first hidden, last: classifier)", ylabel="log10 ||dL/dW||", title="gradient norm by layer")
    axes[1].set(xlabel="training step", ylabel="spread: log10(largest / smallest)", title="spread over the layers")
    axes[0].legend()
    axes[1].legend()
    return fig


CLAIM = Claim(
    name="vanishing-gradients",
    source='the 3-minute tutorial "Batch Normalization" (and "Batch Normalization in Deep Learning", the long overview)',
    statement="Batch normalization prevents vanishing and exploding gradients.",
    measured=(
        f"the spread log10(largest / smallest) of the per-layer weight-gradient norms of a {DEPTH}x{WIDTH} sigmoid MLP "
        "with and without BN (SGD 0.1), at initialization and averaged over training"
    ),
    criterion=(
        "both, Welch intervals over seeds: the spread is smaller with BN, at initialization and over training "
        f"(smallest effect of interest {SMALLEST:g} decade)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
