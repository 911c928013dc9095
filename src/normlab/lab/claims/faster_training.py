"""faster-training: batch normalization makes the network reach a given accuracy in fewer steps.

Ioffe & Szegedy 2015, Fig. 1(a): on MNIST, a network of three fully-connected hidden
layers of 100 sigmoid units, trained with and without BN, same optimizer and learning
rate; the BN network reaches higher test accuracy, faster. Their headline number is of
this kind too: BN-Inception "matches the accuracy of Inception in 14 times fewer steps".

Here: the same network on MNIST-1D, plain SGD (batch 60, learning rate 1), and the
number of steps each network needs to reach 95% of the final test accuracy of the
network without BN (the mean over seeds). A network that never gets there is counted
at the step budget, which understates BN's advantage, never overstates it. The smallest
effect of interest is a tenth of the step budget (:data:`SMALLEST`); steps are counted on
the logging grid, whose interval is their resolution.
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

LR = 1.0
TARGET_FRACTION = 0.95
SMALLEST = 0.1  # steps saved, as a fraction of the step budget


def ioffe_runs(profile: Profile) -> list[RunConfig]:
    """Fig. 1's network with and without BN, one run per seed; also what stable-distributions reads."""
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="sigmoid", norm=norm),
            data=profile.data,
            optimizer="sgd",
            lr=LR,
            batch_size=60,
            steps=profile.pick(60, 3000, 10000),
            eval_every=profile.pick(10, 100, 200),
            seed=seed,
            probes=("last_activation_input",),
        )
        for norm in ("none", "bn")
        for seed in profile.seeds
    ]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.model.norm)
    q = base.resolution(runs)
    final = {n: stats.stat([r.result["final_test_accuracy"] for r in rs], q) for n, rs in by.items()}
    target = TARGET_FRACTION * final["none"]["mean"]
    every = runs[0].config.eval_every
    steps = {n: stats.stat([base.steps_to(r, target, never=r.config.steps) for r in rs], every) for n, rs in by.items()}
    never = {n: sum(base.steps_to(r, target) is None for r in rs) for n, rs in by.items()}
    return {
        "step budget": runs[0].config.steps,
        "target test accuracy": target,
        "steps to target, BN": steps["bn"],
        "steps to target, no BN": steps["none"],
        "runs never reaching the target (BN, no BN)": [never["bn"], never["none"]],
        "speed-up (no-BN steps / BN steps)": base.ratio(steps["none"]["mean"], steps["bn"]["mean"]),
        "final test accuracy, BN": final["bn"],
        "final test accuracy, no BN": final["none"],
    }


def parts(figures: dict):
    return [
        stats.compare(
            figures["steps to target, no BN"],
            figures["steps to target, BN"],
            what="steps saved by BN (no BN - BN)",
            smallest=SMALLEST * figures["step budget"],
            unit="steps",
        )
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (ax,) = plots.figure(title="faster-training: 3x100 sigmoid MLP")
    for norm, rs in base.group(runs, lambda c: c.model.norm).items():
        label = "BN" if norm == "bn" else "no BN"
        plots.band(ax, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], label)
    ax.axhline(figures["target test accuracy"], color="grey", linestyle=":", label="target")
    ax.set(xlabel="training step", ylabel="test accuracy")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="faster-training",
    headline="BN reaches the plain network's accuracy in fewer steps",
    source="Ioffe & Szegedy 2015, Fig. 1(a)",
    statement="With batch normalization the network trains faster and reaches higher test accuracy.",
    measured=(
        "steps for the 3x100 sigmoid MLP, with and without BN (SGD, same learning rate), to reach "
        f"{TARGET_FRACTION:.0%} of the no-BN network's final test accuracy"
    ),
    criterion=f"BN needs fewer steps than no BN; smallest effect of interest: {SMALLEST:.0%} of the step budget",
    runs=ioffe_runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
