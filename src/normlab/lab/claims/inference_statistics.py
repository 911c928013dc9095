"""inference-statistics: at test time batch norm uses population statistics, not the test batch's.

The tutorial "Batch Normalization" ("at inference time, we use frozen running averages
of the mean and variance calculated during training"), a "Deep Learning" revision note
(the mean and variance "of the whole training set", averaged over the training
batches) and a blog post with a Keras CIFAR-100 CNN ("we do not use batch mean
or variance, as this would break the model. (Hint: What is the mean and variance of a
single observation?) Instead, we calculate a moving average"), after Ioffe & Szegedy
2015, Sec. 3.1 and Alg. 2.

Here: a 3x100 ReLU MLP with BN on MNIST-1D, SGD (learning rate 0.05, momentum 0.9,
batch 60), and at the end of training the test accuracy of the same weights under each
kind of statistics (measure ``inference_statistics``): running averages with momentum
0.001, 0.01, 0.1 (torch's default), 0.5, and the cumulative average (``momentum=None``,
Alg. 2's population average over all training batches); precise statistics recomputed
over the training set (:func:`normlab.precise_batchnorm`); and the test batch's own
statistics at test batch sizes 1, 8 and 1000 (the whole test set).

One training per momentum: the running statistics never feed back into training (in
training mode BN uses the batch's), so the five runs of a seed train bit-identical
weights, and the momentum is the only difference. That costs five short runs per seed
instead of a layer tracking several momenta at once, and keeps each run an ordinary
model (``norm_momentum`` of its spec) that a reader can rebuild. The precise and
batch-statistics figures are read from the momentum-0.1 runs; the summary checks that
every momentum's run gave the same ones.
"""

from __future__ import annotations

from ..measures import TEST_BATCHES
from ..models import ModelSpec
from ..train import RunConfig
from .. import stats
from . import base
from .base import Claim, Profile, Run

MOMENTA = (0.001, 0.01, 0.1, 0.5, None)
DEFAULT = 0.1  # torch's momentum: the usual running averages
AT_CHANCE = 1.5  # "garbage": a test accuracy below 1.5x chance
SMALLEST = 0.01  # one percentage point of test accuracy, for both parts
MEASURE = "inference_statistics"


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="relu", norm="bn", norm_momentum=momentum),
            data=profile.data,
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            batch_size=60,
            steps=profile.pick(20, 1000, 3000),
            eval_every=profile.pick(10, 100, 300),
            seed=seed,
            measures=(MEASURE,),
        )
        for momentum in MOMENTA
        for seed in profile.seeds
    ]


def _name(momentum) -> str:
    return "cumulative average" if momentum is None else f"running average, momentum {momentum:g}"


def _values(run: Run) -> dict:
    return run.result["measures"][MEASURE]["value"][0]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.model.norm_momentum)
    chance = 1 / runs[0].result["classes"]
    q = base.resolution(runs)
    figures: dict = {"chance": chance}
    for momentum in MOMENTA:
        figures[f"test accuracy, {_name(momentum)}"] = stats.stat([_values(r)["running"] for r in by[momentum]], q)
    others = ["precise", *(f"batch {b}" for b in TEST_BATCHES), "batch all"]
    labels = {"precise": "precise statistics (training set)", "batch all": "batch statistics, whole test set"}
    for key in others:
        figures[f"test accuracy, {labels.get(key, key.replace('batch', 'batch statistics, batch of'))}"] = stats.stat(
            [_values(r)[key] for r in by[DEFAULT]], q
        )
    # the same weights in every momentum's run: what does not depend on the running averages agrees
    figures["the same weights in every momentum's run"] = all(
        [_values(r)[k] for k in others] == [_values(by[DEFAULT][i])[k] for k in others]
        for rs in by.values()
        for i, r in enumerate(rs)
    )
    return figures


def parts(figures: dict):
    running = figures[f"test accuracy, {_name(DEFAULT)}"]
    one = figures["test accuracy, batch statistics, batch of 1"]
    return [
        stats.compare(
            AT_CHANCE * figures["chance"], one, smallest=SMALLEST, what=f"{AT_CHANCE:g}x chance minus the test accuracy with batches of one"
        ),
        stats.compare(running, one, smallest=SMALLEST, what="running averages (momentum 0.1) minus batches of one, test accuracy"),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    keys = [k for k, v in figures.items() if k.startswith("test accuracy, ") and isinstance(v, dict)]
    short = [
        k.removeprefix("test accuracy, ")
        .replace("running average, momentum ", "momentum ")
        .replace("batch statistics, ", "")
        .replace("precise statistics (training set)", "precise")
        .replace("whole test set", "batch of 1000")
        for k in keys
    ]
    fig, (ax,) = plots.figure(title="inference-statistics: 3x100 ReLU MLP with BN, test accuracy by statistics", width=9)
    colors = ["C0" if "momentum" in s or "cumulative" in s else "C2" if s == "precise" else "C3" for s in short]
    ax.bar(range(len(keys)), [figures[k]["mean"] for k in keys], yerr=[figures[k]["std"] for k in keys], color=colors, capsize=3)
    from matplotlib.patches import Patch

    chance = ax.axhline(figures["chance"], color="grey", linestyle=":")
    ax.set_xticks(range(len(keys)), short, rotation=30, ha="right")
    ax.set(ylabel="test accuracy (mean ± std over seeds)")
    kinds = [Patch(color="C0"), Patch(color="C2"), Patch(color="C3"), chance]
    plots.legend(ax, kinds, ["running averages", "precise (training set)", "the test batch's statistics", "chance"])
    return fig


CLAIM = Claim(
    name="inference-statistics",
    headline="At test time BN must use population statistics, not the test batch's",
    source='the tutorial "Batch Normalization", a "Deep Learning" revision note, a Keras CIFAR-100 blog post; Ioffe & Szegedy 2015, Sec. 3.1, Alg. 2',
    statement=(
        "At test time BN must normalize with population statistics estimated in training (running averages); "
        "normalizing with the test batch's own statistics breaks the model, a batch of one completely."
    ),
    measured=(
        "the test accuracy of one trained 3x100 ReLU MLP per seed with running averages (momentum 0.001 to 0.5), "
        "the cumulative average, precise statistics, and the test batch's statistics at batch sizes 1, 8, 1000"
    ),
    criterion=(
        f"both: with batches of one the test accuracy is below {AT_CHANCE:g}x chance, and the running averages at "
        f"momentum 0.1 beat it; smallest effect of interest of each: {SMALLEST * 100:g} percentage point"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
