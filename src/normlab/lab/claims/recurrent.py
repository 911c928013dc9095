"""recurrent: batch norm is awkward in recurrent networks.

The overview "Batch Normalization in Deep Learning": "Recurrent neural networks ...
face difficulties applying Batch Normalization due to their temporal dependencies.
The statistics calculated across a batch of sequences can vary significantly across
time steps"; layer normalization
(Ba, Kiros & Hinton 2016) "doesn't rely on batch statistics, making it particularly
effective in tasks involving RNN". Cooijmans et al. 2016 ("Recurrent Batch
Normalization") make BN work in an LSTM by keeping separate statistics for each time
step, and for test sequences longer than the training ones reuse the statistics of
the last training step.

Here: a GRU of 32 units reading each MNIST-1D signal as 40 steps of one value (Adam,
learning rate 3e-3, batch 64), with the recurrent pre-activations ``U h`` normalized
by: nothing; BN with one set of statistics shared by all time steps; BN with
statistics per time step and shared scale and shift (Cooijmans et al.'s, reusing the
last training step's statistics beyond it); LayerNorm. After training, the test
accuracy on the test signals as they are (40 steps) and embedded in sequences of 60
and 80 steps: each signal intact at a random offset, standard normal noise (the
standardized data's spread) at every other step (measure ``longer_sequences``,
:func:`normlab.lab.data.embedded`). The pattern is the one the network was trained on;
only the sequence around it is longer, so what is measured is generalization to
length, not to a pattern stretched in time.
"""

from __future__ import annotations

from ..models import ModelSpec
from ..train import RunConfig
from .. import stats
from . import base
from .base import Claim, Profile, Run

NORMS = {"none": "no normalization", "bn": "BN, shared statistics", "bn_step": "BN, statistics per step", "ln": "LayerNorm"}
MEASURE = "longer_sequences"
SMALLEST = 0.01  # one percentage point of test accuracy, for both parts


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("rnn", depth=1, width=32, activation="tanh", norm=norm),
            data=profile.data,
            optimizer="adam",
            lr=3e-3,
            batch_size=64,
            steps=profile.pick(20, 600, 1500),
            eval_every=profile.pick(10, 100, 150),
            seed=seed,
            measures=(MEASURE,),
        )
        for norm in NORMS
        for seed in profile.seeds
    ]


def _accuracy(run: Run, length: int) -> float:
    return run.result["measures"][MEASURE]["value"][0][str(length)]


def lengths(runs: list[Run]) -> list[int]:
    """The test lengths the runs measured, the training length first."""
    return [int(n) for n in runs[0].result["measures"][MEASURE]["value"][0]]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.model.norm)
    q = base.resolution(runs)
    ns = lengths(runs)
    trained, longest = ns[0], ns[-1]
    figures: dict = {"test lengths (the first is the training length)": ns}
    for norm, label in NORMS.items():
        for n in ns:
            figures[f"test accuracy at {n} steps, {label}"] = stats.stat([_accuracy(r, n) for r in by[norm]], q)
    for norm, label in NORMS.items():
        figures[f"accuracy lost from {trained} to {longest} steps, {label}"] = stats.stat(
            [_accuracy(r, trained) - _accuracy(r, longest) for r in by[norm]], q
        )
    return figures


def parts(figures: dict):
    ns = figures["test lengths (the first is the training length)"]
    trained, longest = ns[0], ns[-1]
    return [
        stats.compare(
            figures[f"test accuracy at {trained} steps, {NORMS['bn_step']}"],
            figures[f"test accuracy at {trained} steps, {NORMS['bn']}"],
            smallest=SMALLEST,
            what=f"test accuracy at {trained} steps, BN per step minus BN shared",
        ),
        stats.compare(
            figures[f"accuracy lost from {trained} to {longest} steps, {NORMS['bn_step']}"],
            figures[f"accuracy lost from {trained} to {longest} steps, {NORMS['ln']}"],
            smallest=SMALLEST,
            what=f"accuracy lost from {trained} to {longest} steps, BN per step minus LayerNorm",
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    ns = figures["test lengths (the first is the training length)"]
    title = f"recurrent: GRU(32) over {runs[0].config.data} as {ns[0]} steps; longer: the test signal inside noise"
    fig, (curves, by_length) = plots.figure(2, title=title)
    for norm, rs in base.group(runs, lambda c: c.model.norm).items():
        line = plots.band(curves, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], NORMS[norm])
        at = [figures[f"test accuracy at {n} steps, {NORMS[norm]}"] for n in ns]
        by_length.errorbar(
            ns, [s["mean"] for s in at], yerr=[s["std"] for s in at],
            marker="o", capsize=3, color=line.get_color(), label=NORMS[norm],
        )
    curves.set(xlabel="training step", ylabel=f"test accuracy ({ns[0]} steps)")
    by_length.axvline(ns[0], color="grey", linestyle=":")
    by_length.set(xlabel=f"test sequence length (trained on {ns[0]})", ylabel="test accuracy", xticks=ns)
    plots.legend(by_length)
    return fig


CLAIM = Claim(
    name="recurrent",
    headline="In a recurrent network BN needs statistics per time step, and LayerNorm handles longer sequences better",
    source=(
        '"Batch Normalization in Deep Learning" (an overview article); Cooijmans et al. 2016, "Recurrent Batch '
        'Normalization"; Ba, Kiros & Hinton 2016, "Layer Normalization"'
    ),
    statement=(
        "BN is awkward in RNNs: statistics shared over time steps do not fit (they vary across steps), "
        "statistics per time step do not exist beyond the training length; LayerNorm has neither problem."
    ),
    measured=(
        "a GRU(32) reading each MNIST-1D signal as 40 steps, recurrent pre-activations normalized by nothing, BN "
        "shared over steps, BN per step, or LayerNorm: test accuracy on the test signals (40 steps), and on the same "
        "signals placed intact at a random offset inside 60 and 80 steps of noise"
    ),
    criterion=(
        "both: at the training length BN per step beats BN shared over steps; from the training length to twice it, "
        "BN per step loses more accuracy than LayerNorm; smallest effect of interest of each: "
        f"{SMALLEST * 100:g} percentage point"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
