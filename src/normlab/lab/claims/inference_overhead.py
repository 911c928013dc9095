"""inference-overhead: batch normalization adds a negligible cost at inference.

"Batch Normalization in Deep Learning" (the long overview): "At inference time, Batch
Normalization introduces a negligible overhead. Since the model uses precomputed mean
and variance moving averages, no batch-specific calculations are needed. However, in
resource-constrained environments, this slight additional computation may still
matter."

Here: the lab's CNN with BN (three blocks of two 3-wide convolutions of 32 channels,
BN and ReLU), briefly trained (20 steps in the quick profile, on 600 training
samples) so that its running statistics are real, timed in eval
mode against the same network folded by :func:`normlab.fold_batchnorm` (each BN merged
into the convolution before it) and against the same architecture without BN (a bias
in every convolution, what folding leaves), all three in one process, one thread. A
timing is the mean time of a forward pass over enough calls to last
:data:`TARGET_SECONDS`; in each of :data:`ROUNDS` rounds the three networks are timed
one after the other, in an order rotated from round to round
(:func:`time_interleaved`), so that whatever slows the machine down touches the three
alike. A run's figure is the median over its rounds of the round's ratio ``t(BN) /
t(no BN)``; the verdict is over seeds (one run each; the runner trains them together,
then times each member copied into a plain model, one after the other).

"Negligible" is declared as at most :data:`NEGLIGIBLE` (5%) more time than the network
without BN, at one sample (latency) and at a batch of 256 (throughput); the smallest
effect of interest is 1% of the time.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Callable

import torch

from ...tools.fold import fold_batchnorm
from .. import stats
from ..measures import TrainingStep, measure
from ..models import ModelSpec, build
from ..train import RunConfig, _one_thread
from .base import Claim, Profile, Run

BATCHES = (1, 256)  # samples per forward pass: one sample's latency, and a batch's throughput
ROUNDS = 21  # interleaved rounds of timings in a run
TARGET_SECONDS = 2e-3  # each timing repeats the forward pass until it lasts about this long
NEGLIGIBLE = 0.05  # "negligible": BN adds at most 5% to the time of the network without it
SMALLEST = 0.01  # smallest effect of interest, in units of the time ratio
NETWORKS = ("BN", "folded", "no BN")
COLORS = {"BN": "C0", "folded": "C3", "no BN": "C1"}


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Per round and function, the mean seconds of one of ``calls`` consecutive calls.

    In round ``r`` the functions run in their order rotated by ``r`` (round 0: a, b, c;
    round 1: b, c, a; ...), so that each is timed as often first, second and last, and
    a slow or fast spell of the machine spreads over all of them. Returns ``{name:
    [seconds per call in round 0, 1, ...]}``.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            fn = fns[name]
            start = clock()
            for _ in range(calls):
                fn()
            times[name].append((clock() - start) / calls)
    return times


def median_ratio(times: dict[str, list[float]], of: str, to: str) -> float:
    """The median over rounds of ``times[of][r] / times[to][r]``: the ratio of two interleaved timings."""
    return statistics.median(a / b for a, b in zip(times[of], times[to]))


def _calls(fn: Callable[[], object], clock=time.perf_counter) -> int:
    """How many calls of ``fn`` last about :data:`TARGET_SECONDS` (after three calls to warm it up)."""
    for _ in range(3):
        fn()
    start = clock()
    fn()
    return max(1, round(TARGET_SECONDS / max(clock() - start, 1e-9)))


@measure("inference_latency", at="end")
def inference_latency(step: TrainingStep) -> dict:
    """Eval-mode forward times of the trained BN network, of it folded, and of the same
    architecture without BN (see the module's docstring), per batch size of :data:`BATCHES`:
    ``{"batch B": {"calls": ..., "seconds": {name: [per round]}}, "fold error": ...}``."""
    model = step.model.eval()
    folded = fold_batchnorm(model).model.eval()
    torch.manual_seed(step.config.seed)
    plain = build(replace(step.config.model, norm="none"), step.dataset.sample_shape, step.dataset.classes).eval()
    x_test = step.dataset.x_test
    out: dict = {}
    with torch.no_grad(), _one_thread():  # as runs train; a timing must not depend on how many threads the caller left
        x = x_test[: max(BATCHES)]
        out["fold error"] = float((model(x) - folded(x)).abs().max() / model(x).abs().max())
        for b in BATCHES:
            x = x_test[:b] if len(x_test) >= b else x_test.repeat((b + len(x_test) - 1) // len(x_test), *[1] * (x_test.dim() - 1))[:b]
            fns = {"BN": lambda: model(x), "folded": lambda: folded(x), "no BN": lambda: plain(x)}
            calls = _calls(fns["no BN"])
            out[f"batch {b}"] = {"calls": calls, "seconds": time_interleaved(fns, ROUNDS, calls)}
    return out


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("cnn", depth=3, width=32, activation="relu", norm="bn", final_width=32),
            data=profile.data,
            optimizer="adam",
            lr=1e-3,
            batch_size=60,
            steps=profile.pick(10, 20, 100),
            eval_every=profile.pick(10, 20, 100),
            seed=seed,
            train_subset=600,  # the training only makes the running statistics real; its accuracy is not judged
            measures=("inference_latency",),
        )
        for seed in profile.seeds
    ]


def _timings(run: Run) -> dict:
    return run.result["measures"]["inference_latency"]["value"][0]


def summarize(runs: list[Run]) -> dict:
    runs = sorted(runs, key=lambda r: r.config.seed)
    figures: dict = {}
    for b in BATCHES:
        times = [_timings(r)[f"batch {b}"]["seconds"] for r in runs]
        figures[f"batch {b}: time ratio BN / no BN"] = stats.stat([median_ratio(t, "BN", "no BN") for t in times])
        figures[f"batch {b}: time ratio folded / no BN"] = stats.stat([median_ratio(t, "folded", "no BN") for t in times])
        for name in NETWORKS:
            figures[f"batch {b}: microseconds per forward, {name}"] = stats.stat([1e6 * statistics.median(t[name]) for t in times])
    figures["largest relative difference of the folded network's outputs"] = max(_timings(r)["fold error"] for r in runs)
    return figures


def parts(figures: dict) -> list[stats.Comparison]:
    return [
        stats.compare(
            1 + NEGLIGIBLE,
            figures[f"batch {b}: time ratio BN / no BN"],
            what=f"batch of {b}: {1 + NEGLIGIBLE:g} minus the time ratio BN / no BN (eval mode, not folded)",
            smallest=SMALLEST,
        )
        for b in BATCHES
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    fig, axes = plots.figure(len(BATCHES), title="inference-overhead: eval time of a CNN with BN, folded, and without BN", width=4.5)
    for ax, b in zip(axes, BATCHES):
        for i, name in enumerate(NETWORKS):
            values = [1e6 * t for r in runs for t in _timings(r)[f"batch {b}"]["seconds"][name]]
            ax.boxplot(values, positions=[i], widths=0.6, patch_artist=True, boxprops={"facecolor": COLORS[name], "alpha": 0.5})
        ax.set_xticks(range(len(NETWORKS)), NETWORKS)
        ratio = figures[f"batch {b}: time ratio BN / no BN"]["mean"]
        ax.set(ylabel="µs per forward pass", title=f"batch of {b}: BN / no BN = {ratio:.2f}x (all rounds and seeds)")
    return fig


CLAIM = Claim(
    name="inference-overhead",
    source='"Batch Normalization in Deep Learning" (the long overview: how BN impacts inference time)',
    statement="At inference time, batch normalization introduces a negligible overhead.",
    measured=(
        "eval-mode forward time of a 1-D CNN with BN (3 blocks of two 32-channel convolutions), of it folded with "
        f"normlab.fold_batchnorm and of the same network without BN, {ROUNDS} interleaved rounds in one process, at "
        f"batches of {' and '.join(map(str, BATCHES))}; per run the median ratio over the rounds"
    ),
    criterion=(
        f"both batch sizes, Welch intervals over seeds: the time ratio BN / no BN is below {1 + NEGLIGIBLE:g} (at most "
        f"{NEGLIGIBLE:.0%} more: 'negligible'), smallest effect of interest {SMALLEST:g} in ratio units"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
