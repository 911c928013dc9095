"""inference-statistics: the statistics batch norm is evaluated with, estimated during training,
are as good as the training set's own.

At test time BN normalizes with population statistics estimated in training, never
with the test batch's. Ioffe & Szegedy 2015 (Sec. 3.1, Alg. 2) compute them over the
training set with the trained network; the tutorials estimate them during
training: "frozen running averages of the mean and variance calculated during
training" ("Batch Normalization", a 3-minute tutorial), "a moving average and variance
estimate of the training population. These estimates are averages of all batch means
and variances calculated during training" (a blog post reviewing Ioffe and Szegedy's
batch normalization with a Keras CNN on CIFAR-100), "the mean and variance of the
whole training set" (a revision note on batch normalization and internal covariate
shift). Wu & Johnson 2021 ("Rethinking 'Batch' in BatchNorm", Sec. 3) separate the two:
an exponential moving average (EMA) of batch statistics taken while the weights still
move, against *precise* statistics recomputed over the training data with the final,
fixed weights.

Here: a 3x100 ReLU MLP with BN, SGD (learning rate 0.05, momentum 0.9, batch 60), and
at the end of training the test accuracy of the same weights under each kind of
statistics (measure ``inference_statistics``): EMAs with momentum 0.01, 0.1 (torch's
default) and 0.5; the cumulative average of every training batch's statistics
(``momentum=None``: the blog post's "averages of all batch means and variances
calculated during training"); precise statistics over the training set
(:func:`normlab.precise_batchnorm`); and, reported only, the test batch's own
statistics at batch sizes 1, 8 and the whole test set (a batch of one normalizes every
value to 0, so BN outputs its shift: that is arithmetic, not a finding).

Two parts, each a one-sided equivalence (non-inferiority) of per-seed differences of
the same weights: (1) the EMA at momentum 0.1 is as good as precise statistics, (2)
the cumulative average is as good as the EMA. "As good": at most :data:`MARGIN` (one
percentage point) worse, beyond the noise; a deficit of more than
``MARGIN - SMALLEST`` (half a point), beyond the noise, is not.

One training per momentum: the running statistics never feed back into training (in
training mode BN uses the batch's), so the runs of a seed train bit-identical weights
and the momentum is the only difference; each run stays an ordinary model a reader can
rebuild. The precise and batch-statistics figures are read from the momentum-0.1 runs;
the summary checks that every momentum's run gave the same ones.
"""

from __future__ import annotations

from .. import stats
from ..measures import TEST_BATCHES
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

MOMENTA = (0.01, 0.1, 0.5, None)
DEFAULT = 0.1  # torch's momentum: the usual running averages
MARGIN = 0.01  # "as good": at most one percentage point of test accuracy worse
SMALLEST = 0.005  # and clearly so within half a point: the equivalence holds at a deficit of at most MARGIN - SMALLEST
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


OTHERS = ("precise", *(f"batch {b}" for b in TEST_BATCHES), "batch all")  # what does not depend on the momentum
LABELS = {"precise": "precise statistics (training set)", "batch all": "batch statistics, whole test set"}


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("batch", "batch statistics, batch of"))


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: c.model.norm_momentum)
    q = base.resolution(runs)
    figures: dict = {"chance": 1 / runs[0].result["classes"]}
    running = {m: [_values(r)["running"] for r in by[m]] for m in MOMENTA}
    for m in MOMENTA:
        figures[f"test accuracy, {_name(m)}"] = stats.stat(running[m], q)
    for key in OTHERS:
        figures[f"test accuracy, {_label(key)}"] = stats.stat([_values(r)[key] for r in by[DEFAULT]], q)
    precise = [_values(r)["precise"] for r in by[DEFAULT]]
    figures[f"{_name(DEFAULT)} - precise statistics, per seed"] = stats.stat(
        [a - b for a, b in zip(running[DEFAULT], precise)], q
    )
    figures[f"cumulative average - {_name(DEFAULT)}, per seed"] = stats.stat(
        [a - b for a, b in zip(running[None], running[DEFAULT])], q
    )
    # the same weights in every momentum's run: what does not depend on the running averages agrees
    figures["the same weights in every momentum's run"] = all(
        [_values(r)[k] for k in OTHERS] == [_values(by[DEFAULT][i])[k] for k in OTHERS]
        for rs in by.values()
        for i, r in enumerate(rs)
    )
    return figures


def parts(figures: dict):
    return [
        stats.compare(
            figures[f"{_name(DEFAULT)} - precise statistics, per seed"], 0.0, threshold=-MARGIN, smallest=SMALLEST,
            what="test accuracy, running averages (momentum 0.1) - precise statistics, same weights",
        ),
        stats.compare(
            figures[f"cumulative average - {_name(DEFAULT)}, per seed"], 0.0, threshold=-MARGIN, smallest=SMALLEST,
            what="test accuracy, cumulative average - running averages (momentum 0.1), same weights",
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from matplotlib.patches import Patch

    from .. import plots

    keys = [k for k, v in figures.items() if k.startswith("test accuracy, ") and isinstance(v, dict)]
    short = [
        k.removeprefix("test accuracy, ")
        .replace("running average, momentum ", "momentum ")
        .replace("batch statistics, ", "")
        .replace("precise statistics (training set)", "precise")
        .replace("whole test set", "whole test batch")
        for k in keys
    ]
    fig, (ax,) = plots.figure(title="inference-statistics: 3x100 ReLU MLP with BN, the same weights under each statistics", width=9)
    colors = ["C0" if "momentum" in s else "C1" if "cumulative" in s else "C2" if s == "precise" else "C3" for s in short]
    ax.bar(range(len(keys)), [figures[k]["mean"] for k in keys], yerr=[figures[k]["std"] for k in keys], color=colors, capsize=3)
    chance = ax.axhline(figures["chance"], color="grey", linestyle=":")
    ax.set_xticks(range(len(keys)), short, rotation=30, ha="right")
    ax.set(ylabel="test accuracy (mean ± std over seeds)")
    kinds = [Patch(color="C0"), Patch(color="C1"), Patch(color="C2"), Patch(color="C3"), chance]
    plots.legend(ax, kinds, ["running averages (EMA)", "cumulative average", "precise (training set)", "the test batch's statistics", "chance"])
    return fig


CLAIM = Claim(
    name="inference-statistics",
    headline="The statistics BN estimates during training are as good at test time as the training set's own",
    source=(
        'Ioffe & Szegedy 2015, Sec. 3.1, Alg. 2; the tutorials "Batch Normalization" (3-minute read), the revision note '
        "on batch normalization and internal covariate shift, and the blog post reviewing Ioffe and Szegedy with a Keras "
        'CNN on CIFAR-100; Wu & Johnson 2021, "Rethinking \'Batch\' in BatchNorm", Sec. 3'
    ),
    statement=(
        "At test time BN normalizes with population statistics estimated during training: the running averages (an "
        "exponential moving average of the batch statistics), or the average of all batch means and variances "
        "calculated during training, are as good as the training set's exact statistics for the final weights."
    ),
    measured=(
        "the test accuracy of one trained 3x100 ReLU MLP per seed under its running averages (momentum 0.01, 0.1, 0.5), "
        "the cumulative average of all training batches (momentum None), precise statistics recomputed over the "
        "training set, and (reported only) the test batch's statistics at batch sizes 1, 8 and the whole test set"
    ),
    criterion=(
        "both, per seed on the same weights: the running averages at momentum 0.1 are at most "
        f"{MARGIN * 100:g} point worse than precise statistics, and the cumulative average at most {MARGIN * 100:g} "
        f"point worse than the running averages (one-sided equivalence; smallest effect of interest {SMALLEST * 100:g} "
        f"point: a deficit above {(MARGIN - SMALLEST) * 100:g} point, beyond the noise, is not as good)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
