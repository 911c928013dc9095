"""small-batches: batch norm degrades as the batch shrinks; group and layer norm do not.

Wu & He 2018 ("Group Normalization", Table 2): ResNet-50 on ImageNet, batch sizes 32
down to 2 images per GPU, the same epochs, the learning rate scaled linearly with the
batch. BN's error grows from 23.6% at 32 to 34.7% at 2; GN's stays at about 24%.
Batch Renorm helps BN but stays behind GN (Sec. 4.1: 26.3% at batch 4, vs. BN 27.3%,
GN 24.2%). The overview "Batch Normalization in Deep Learning": BN has "performance issues with small batch sizes ... the
statistics may not be representative, leading to noisy estimates".

Here: the 3x100 ReLU MLP on MNIST-1D with BN, GroupNorm (4 groups of 25 units),
LayerNorm (each sample over its 100 units) and Batch Renorm (the lab's schedule,
:data:`~normlab.lab.models.RENORM_SCHEDULE`), all before the activation, at batch
sizes 2 to 64, each trained for the same number of epochs (6 quick, 15 full) over the
first 1000 (quick) or 2000 (full) training samples with SGD (momentum 0.9) at learning rate
``0.05 * batch / 32``. The test error is measured in eval mode: BN's and Renorm's
running statistics are estimated from those tiny batches, which is part of the
phenomenon. In an MLP a batch of B samples gives each of BN's statistics B values;
in a CNN, B times the positions (see docs/claims.md for why not the CNN here).

A method's *degradation* is its test error at batch 2 minus at batch 32 (per seed),
Wu & He's two ends. Four parts, all needed, each with the smallest effect of interest
:data:`MARGIN` (one percentage point of test error):

1. BN degrades;
2. BN degrades more than GN (GN, which does not depend on the batch, is the control
   for everything else that changes with the batch size: the number of steps, the
   learning rate);
3. the same against LN;
4. Renorm helps: its test error at batch 2 is lower than BN's.
"""

from __future__ import annotations

from .. import stats
from ..models import ModelSpec
from ..train import RunConfig
from . import base
from .base import Claim, Profile, Run

BATCHES = (2, 4, 8, 16, 32, 64)
NORMS = {"bn": "BN", "gn": "GN", "ln": "LN", "renorm": "Renorm"}
MARGIN = 0.01
BASE_LR = 0.05  # at batch 32


def runs(profile: Profile) -> list[RunConfig]:
    samples, epochs = profile.pick((64, 1), (1000, 6), (2000, 15))
    return [
        RunConfig(
            ModelSpec("mlp", depth=3, width=100, activation="relu", norm=norm),
            data=profile.data,
            optimizer="sgd",
            lr=BASE_LR * batch / 32,
            momentum=0.9,
            batch_size=batch,
            steps=epochs * samples // batch,
            eval_every=epochs * samples // batch,  # only the final error matters
            seed=seed,
            train_subset=samples,
        )
        for norm in NORMS
        for batch in BATCHES
        for seed in profile.seeds
    ]


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, lambda c: (c.model.norm, c.batch_size))
    error = {k: [1 - r.result["final_test_accuracy"] for r in rs] for k, rs in by.items()}
    q = base.resolution(runs)
    figures = {}
    for n, label in NORMS.items():
        figures[f"degradation (error at batch 2 - at 32), {label}"] = stats.stat(
            [a - b for a, b in zip(error[n, 2], error[n, 32])], q
        )
    for n, label in NORMS.items():
        figures[f"test error at batch 2, {label}"] = stats.stat(error[n, 2], q)
        figures[f"test error at batch 32, {label}"] = stats.stat(error[n, 32], q)
    for n, label in NORMS.items():
        figures[f"test error by batch size, {label}"] = {str(b): stats.stat(error[n, b], q) for b in BATCHES}
    return figures


def parts(figures: dict):
    bn = figures["degradation (error at batch 2 - at 32), BN"]
    return [
        stats.compare(bn, 0.0, smallest=MARGIN, what="BN's degradation"),
        *(
            stats.compare(
                bn,
                figures[f"degradation (error at batch 2 - at 32), {other}"],
                smallest=MARGIN,
                what=f"BN's degradation - {other}'s",
            )
            for other in ("GN", "LN")
        ),
        stats.compare(
            figures["test error at batch 2, BN"],
            figures["test error at batch 2, Renorm"],
            smallest=MARGIN,
            what="test error Renorm saves at batch 2 (BN - Renorm)",
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, (ax,) = plots.figure(title="small-batches: 3x100 ReLU MLP, same epochs, lr ∝ batch", width=6)
    for label in NORMS.values():
        f = figures[f"test error by batch size, {label}"]
        per_seed = [list(v) for v in zip(*(f[str(b)]["values"] for b in BATCHES))]
        plots.band(ax, BATCHES, per_seed, label, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
    ax.set(xlabel="batch size", ylabel="test error (eval mode)")
    plots.legend(ax)
    return fig


CLAIM = Claim(
    name="small-batches",
    headline="BN degrades at small batches where GroupNorm and LayerNorm do not; Batch Renorm helps",
    source='Wu & He 2018, Table 2 and Sec. 4.1; the overview "Batch Normalization in Deep Learning"',
    statement=(
        "BN's error grows quickly as the batch shrinks (ResNet-50: 23.6% at batch 32, 34.7% at batch 2), "
        "while GroupNorm and LayerNorm do not depend on the batch; Batch Renorm reduces BN's loss."
    ),
    measured=(
        "test error of the 3x100 ReLU MLP with BN, GN, LN, Batch Renorm at batch sizes 2-64 (same epochs, "
        "learning rate linear in the batch); per seed, the degradation: error at batch 2 minus at batch 32"
    ),
    criterion=(
        "all four: BN degrades, and more than GN and LN, and Renorm's error at batch 2 is below BN's; smallest "
        f"effect of interest of each: {MARGIN * 100:g} percentage point of test error"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
