"""recurrent: batch norm is awkward in recurrent networks.

The overview "Batch Normalization in Deep Learning": "Recurrent neural networks ... face difficulties applying Batch
Normalization due to their temporal dependencies. The statistics calculated across a
batch of sequences can vary significantly across time steps"; layer normalization
(Ba, Kiros & Hinton 2016) "doesn't rely on batch statistics, making it particularly
effective in tasks involving RNN". Cooijmans et al. 2016 ("Recurrent Batch
Normalization") make BN work in an LSTM by keeping separate statistics for each time
step, and for test sequences longer than the training ones reuse the statistics of
the last training step.

Here: a GRU of 32 units reading each MNIST-1D signal as 40 steps of one value (Adam,
learning rate 3e-3, batch 64), with the recurrent pre-activations ``U h`` normalized
by: nothing; BN with one set of statistics shared by all time steps; BN with
statistics per time step and shared scale and shift (Cooijmans et al.'s, reusing step
40's statistics beyond step 40); LayerNorm. After training, the test accuracy on the
test signals generated at 40, 60 and 80 points (mnist1d's ``final_seq_length``: the
same signals, resampled; measure ``longer_sequences``).
"""

from __future__ import annotations

from ..measures import TEST_LENGTHS
from ..models import ModelSpec
from ..train import RunConfig
from .. import stats
from . import base
from .base import Claim, Profile, Run

NORMS = {"none": "no normalization", "bn": "BN, shared statistics", "bn_step": "BN, statistics per step", "ln": "LayerNorm"}
MEASURE = "longer_sequences"
TRAINED, LONGEST = TEST_LENGTHS[0], TEST_LENGTHS[-1]
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


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.model.norm)
    q = base.resolution(runs)
    figures: dict = {}
    for norm, label in NORMS.items():
        for n in TEST_LENGTHS:
            figures[f"test accuracy at {n} steps, {label}"] = stats.stat([_accuracy(r, n) for r in by[norm]], q)
    for norm, label in NORMS.items():
        figures[f"accuracy lost from {TRAINED} to {LONGEST} steps, {label}"] = stats.stat(
            [_accuracy(r, TRAINED) - _accuracy(r, LONGEST) for r in by[norm]], q
        )
    return figures


def parts(figures: dict):
    return [
        stats.compare(
            figures[f"test accuracy at {TRAINED} steps, {NORMS['bn_step']}"],
            figures[f"test accuracy at {TRAINED} steps, {NORMS['bn']}"],
            smallest=SMALLEST,
            what=f"test accuracy at {TRAINED} steps, BN per step minus BN shared",
        ),
        stats.compare(
            figures[f"accuracy lost from {TRAINED} to {LONGEST} steps, {NORMS['bn_step']}"],
            figures[f"accuracy lost from {TRAINED} to {LONGEST} steps, {NORMS['ln']}"],
            smallest=SMALLEST,
            what=f"accuracy lost from {TRAINED} to {LONGEST} steps, BN per step minus LayerNorm",
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (curves, lengths) = plots.figure(2, title="recurrent: GRU(32) over MNIST-1D as 40 steps of one value")
    for norm, rs in base.group(runs, lambda c: c.model.norm).items():
        line = plots.band(curves, rs[0].result["step"], [r.result["test_accuracy"] for r in rs], NORMS[norm])
        stats = [figures[f"test accuracy at {n} steps, {NORMS[norm]}"] for n in TEST_LENGTHS]
        lengths.errorbar(
            TEST_LENGTHS, [s["mean"] for s in stats], yerr=[s["std"] for s in stats],
            marker="o", capsize=3, color=line.get_color(), label=NORMS[norm],
        )
    curves.set(xlabel="training step", ylabel=f"test accuracy ({TRAINED} steps)")
    lengths.axvline(TRAINED, color="grey", linestyle=":")
    lengths.set(xlabel="test sequence length (trained on 40)", ylabel="test accuracy", xticks=TEST_LENGTHS)
    plots.legend(lengths)
    return fig


CLAIM = Claim(
    name="recurrent",
    headline="In a recurrent network BN needs statistics per time step, and LayerNorm handles longer sequences better",
    source='the overview "Batch Normalization in Deep Learning"; Cooijmans et al. 2016; Ba, Kiros & Hinton 2016',
    statement=(
        "BN is awkward in RNNs: statistics shared over time steps do not fit (they vary across steps), "
        "statistics per time step do not exist beyond the training length; LayerNorm has neither problem."
    ),
    measured=(
        "a GRU(32) over MNIST-1D as 40 steps, recurrent pre-activations normalized by nothing, BN shared over "
        "steps, BN per step, or LayerNorm: test accuracy on the test signals at 40 steps, and resampled to 60 and 80"
    ),
    criterion=(
        "both: at 40 steps BN per step beats BN shared over steps; from 40 to 80 steps BN per step loses more "
        f"accuracy than LayerNorm; smallest effect of interest of each: {SMALLEST * 100:g} percentage point"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
