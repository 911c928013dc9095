"""shifted-data: batch norm's statistics tie a network to the data they were estimated on.

"Batch Normalization in Deep Learning" (the long overview), on the dependence on batch
statistics: "BN heavily relies on each batch's statistics (mean and variance) ... [it]
may affect the model's generalisation ability if ... the distribution of data shifts."
Li, Wang, Shi, Liu & Hou 2016 ("Revisiting Batch Normalization For Practical Domain
Adaptation", AdaBN) turn the dependence around: re-estimate every BN layer's statistics
on data of the new distribution, and the network adapts without any training.

Here: the 3x100 ReLU MLP with BN, trained on the clean training split (SGD with
momentum 0.9). At the end the measure ``shift_adaptation`` shifts the validation and
test splits alike (:data:`SHIFTS`) and measures the test accuracy with the training
statistics (the running averages) and with statistics re-estimated on the shifted
validation split by :func:`normlab.adapt_batchnorm` (unlabelled data of the new
distribution, in training-size batches; the test split stays for the verdict), and the
same on the clean data (re-estimating there should change little).

The shifts: a change of gain and offset (every input doubled and moved by one
training-split standard deviation, as a sensor's or a camera's calibration changes),
which the first BN layer can undo exactly once its statistics are re-estimated; and
added Gaussian noise of one standard deviation, which it cannot undo.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...tools.precise import adapt_batchnorm
from .. import stats
from ..measures import TrainingStep, measure
from ..models import ModelSpec
from ..train import RunConfig, accuracy
from .base import Claim, Profile, Run

SHIFTS = ("gain and offset", "noise")
SMALLEST = 0.02  # smallest effect of interest: 2 points of test accuracy
COLORS = {"training statistics": "C0", "re-estimated (AdaBN)": "C2"}


def shift(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` (standardized data) shifted: ``"gain and offset"``: ``2 x + 1``; ``"noise"``: ``x + N(0, 1)``."""
    if kind == "gain and offset":
        return 2 * x + 1
    if kind == "noise":
        return x + torch.randn(x.shape, generator=generator, dtype=x.dtype)
    raise ValueError(f"shift: kind must be one of {SHIFTS}, got {kind!r}")


def adapted(model: nn.Module, x_adapt: torch.Tensor, batch: int) -> nn.Module:
    """A copy of ``model`` whose BN statistics are re-estimated on ``x_adapt``, in batches of
    ``batch`` (:func:`normlab.adapt_batchnorm`, AdaBN); ``model`` is untouched."""
    copied = copy.deepcopy(model)
    return adapt_batchnorm(copied, [x_adapt[i : i + batch] for i in range(0, len(x_adapt), batch)], progress=False)


def adapted_accuracy(model: nn.Module, x_adapt: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Accuracy on ``(x, y)`` of :func:`adapted` ``(model, x_adapt, batch)``."""
    return accuracy(adapted(model, x_adapt, batch), x, y)


@measure("shift_adaptation", at="end")
def shift_adaptation(step: TrainingStep) -> dict:
    """Test accuracy, clean and under each shift of :data:`SHIFTS`, with the training statistics
    (``"running"``) and with statistics re-estimated on the validation split shifted alike (``"adapted"``)."""
    ds, b = step.dataset, step.config.batch_size
    generator = torch.Generator().manual_seed(step.config.seed)
    out = {"clean": {"running": accuracy(step.model, ds.x_test, ds.y_test),
                     "adapted": adapted_accuracy(step.model, ds.x_val, ds.x_test, ds.y_test, b)}}
    for kind in SHIFTS:
        x_val, x_test = shift(ds.x_val, kind, generator), shift(ds.x_test, kind, generator)
        out[kind] = {"running": accuracy(step.model, x_test, ds.y_test), "adapted": adapted_accuracy(step.model, x_val, x_test, ds.y_test, b)}
    out["test_samples"] = len(ds.x_test)
    return out


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="relu", norm="bn"),
            data=profile.data,
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            batch_size=60,
            steps=profile.pick(30, 300, 3000),
            eval_every=profile.pick(30, 300, 3000),
            seed=seed,
            measures=("shift_adaptation",),
        )
        for seed in profile.seeds
    ]


def _measured(run: Run) -> dict:
    return run.result["measures"]["shift_adaptation"]["value"][0]


def summarize(runs: list[Run]) -> dict:
    resolution = 1 / _measured(runs[0])["test_samples"]
    figures: dict = {}
    for data in ("clean", *SHIFTS):
        for stats_ in ("running", "adapted"):
            label = "training statistics" if stats_ == "running" else "re-estimated (AdaBN)"
            figures[f"test accuracy, {data}, {label}"] = stats.stat([_measured(r)[data][stats_] for r in runs], resolution=resolution)
    return figures


def parts(figures: dict) -> list[stats.Comparison]:
    parts = []
    for kind in SHIFTS:
        running = figures[f"test accuracy, {kind}, training statistics"]
        parts.append(stats.compare(
            figures["test accuracy, clean, training statistics"], running,
            what=f"{kind}: accuracy lost to the shift with the training statistics", smallest=SMALLEST,
        ))
        parts.append(stats.compare(
            figures[f"test accuracy, {kind}, re-estimated (AdaBN)"], running,
            what=f"{kind}: accuracy regained by re-estimating the statistics on shifted data", smallest=SMALLEST,
        ))
    return parts


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (ax,) = plots.figure(title="shifted-data: 3x100 ReLU MLP with BN, test accuracy under a shift of the data", width=7)
    datas = ("clean", *SHIFTS)
    for i, label in enumerate(COLORS):
        f = [figures[f"test accuracy, {d}, {label}"] for d in datas]
        ax.bar([j + 0.4 * i for j in range(len(datas))], [v["mean"] for v in f], width=0.4, yerr=[v["std"] for v in f],
               capsize=3, color=COLORS[label], label=label)
    ax.set_xticks([j + 0.2 for j in range(len(datas))], datas)
    ax.set(ylabel="test accuracy (mean ± std over seeds)")
    ax.legend()
    return fig


CLAIM = Claim(
    name="shifted-data",
    source='"Batch Normalization in Deep Learning" (the long overview: dependence on batch statistics); Li et al. 2016 (AdaBN)',
    statement=(
        "BN's reliance on statistics of the training batches hurts when the distribution of the data shifts; "
        "re-estimating the statistics on the shifted data (AdaBN) recovers accuracy."
    ),
    measured=(
        "test accuracy of the 3x100 ReLU MLP with BN on clean data and under two shifts (gain 2 and offset 1; "
        "Gaussian noise of std 1), with the training statistics and with statistics re-estimated on the shifted "
        "validation split by normlab.adapt_batchnorm"
    ),
    criterion=(
        "all four, Welch intervals over seeds: for each shift, the training statistics lose accuracy on the shifted "
        f"data, and re-estimated statistics regain some (smallest effect of interest {SMALLEST:.0%} each)"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
