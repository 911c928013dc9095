"""What every claim is made of.

A claim is a :class:`Claim`: its source and statement, what is measured and the
criterion, all declared in code before anything runs, and four functions:

* ``runs(profile)``: the training runs it needs (:class:`~normlab.lab.train.RunConfig`),
  one per arm and seed of ``profile.seeds``,
* ``summarize(runs)``: the measured figures from those runs' results,
* ``parts(figures)``: the comparisons that decide it (:func:`normlab.lab.stats.compare`),
  each with its smallest effect of interest; :func:`normlab.lab.stats.decide` turns them
  into the verdict,
* ``plot(runs, figures)``: a matplotlib figure for the report.

``summarize``, ``parts`` and ``plot`` see only what ``results.json`` holds, so the
report can be rebuilt from it at any time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..stats import Comparison, Verdict
from ..train import RunConfig

__all__ = ["Claim", "Profile", "PROFILES", "Run", "SKIPPED", "FAILED", "UNJUDGED", "ratio", "steps_to", "group", "resolution", "accuracy", "tune"]

SKIPPED = "skipped"  # not a verdict: the claim's networks do not fit the data (normlab.lab.reproduce.plan)
FAILED = "failed"  # not a verdict: some of its runs could not be trained, their workers died (normlab.lab.reproduce.failed)
UNJUDGED = (SKIPPED, FAILED)


@dataclass(frozen=True)
class Profile:
    """How much work to spend: ``tiny`` (tests, seconds), ``quick`` (the default, minutes) or ``full``
    for the claims; ``sources`` runs the source experiments as their sources wrote them
    (hours to days: CIFAR networks trained for their sources' budgets).

    ``rounds`` are the seeds per arm at each look (cumulative): a claim's runs are trained
    with the first round's seeds, judged, and given the next round's while its verdict is
    inconclusive (:mod:`normlab.lab.stats`). ``seed_offset`` shifts every seed, for a
    second, disjoint set of seeds. ``look`` is the round whose seeds :attr:`seeds` lists.
    """

    name: str
    rounds: tuple[int, ...]
    data: str = "mnist1d"
    seed_offset: int = 0
    look: int = 1

    def __post_init__(self):
        if not self.rounds or any(b <= a for a, b in zip(self.rounds, self.rounds[1:])) or self.rounds[0] < 1:
            raise ValueError(f"Profile: rounds must be increasing seed counts of at least 1, got {self.rounds}")
        if self.seed_offset < 0:
            raise ValueError(f"Profile: seed_offset must be non-negative, got {self.seed_offset}")

    @property
    def seeds(self) -> range:
        """The seeds of round :attr:`look`."""
        return range(self.seed_offset, self.seed_offset + self.rounds[self.look - 1])

    @property
    def looks(self) -> int:
        return len(self.rounds)

    def at(self, look: int) -> Profile:
        """The profile at round ``look`` (1-based)."""
        return replace(self, look=look)

    def pick(self, tiny, quick, full):
        """The value for this profile (a claim's setting)."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.name]

    def as_written(self, source, tiny):
        """A source experiment's setting: ``source``, as its source wrote it, or ``tiny`` in the tiny profile (tests)."""
        if self.name not in ("sources", "tiny"):
            raise ValueError(f"Profile {self.name!r}: the source experiments run in the sources profile (or tiny, for tests)")
        return tiny if self.name == "tiny" else source


PROFILES = {
    "tiny": Profile("tiny", (2,)),
    "quick": Profile("quick", (10, 20)),
    "full": Profile("full", (20, 40)),
    "sources": Profile("sources", (2,)),
}


@dataclass(frozen=True)
class Run:
    config: RunConfig
    result: dict


@dataclass(frozen=True)
class Claim:
    name: str  # as typed on the command line
    source: str  # where the claim is made
    statement: str  # what the source says
    measured: str  # what we measure
    criterion: str  # when we call it reproduced
    runs: Callable[[Profile], list[RunConfig]]
    summarize: Callable[[list[Run]], dict[str, Any]]
    parts: Callable[[dict[str, Any]], list[Comparison]]
    plot: Callable[[list[Run], dict[str, Any]], Any]
    findings: Callable[[Verdict], dict[str, str]] | None = None  # words for the decided parts, in the report
    headline: str = ""  # the claim in one line, for the report's headline (default: the statement)


def resolution(runs: list[Run]) -> float:
    """The resolution of the runs' test accuracies: one test sample (0 if the results do not say)."""
    n = runs[0].result.get("test_samples")
    return 1 / n if n else 0.0


def accuracy(run: Run, split: str = "test", at: int | None = None) -> float:
    """The run's accuracy on ``split`` (``"val"`` or ``"test"``) after ``at`` updates (a logged
    step), or at the end. A run that diverged before ``at`` counts with what is left of it."""
    if at is None:
        return run.result[f"final_{split}_accuracy"]
    if at in run.result["step"]:
        return run.result[f"{split}_accuracy"][run.result["step"].index(at)]
    if run.result["diverged"] and run.result["diverged"]["step"] <= at:
        return run.result[f"final_{split}_accuracy"]
    raise ValueError(f"the run has no log at step {at} (its logs: {run.result['step']})")


def tune(runs: list[Run], at: int | None = None) -> tuple[float, list[Run]]:
    """The learning rate of ``runs`` (one arm's, at several rates) with the best mean validation
    accuracy after ``at`` updates (or at the end), and its runs: the choice a practitioner makes,
    on data the verdict never sees. Ties go to the smaller rate."""
    by = group(runs, lambda c: c.lr)
    best = max(sorted(by), key=lambda lr: sum(accuracy(r, "val", at) for r in by[lr]) / len(by[lr]))
    return best, by[best]


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None where ``b`` is 0."""
    return a / b if b else None


def steps_to(run: Run, target: float, never=None):
    """The first logged step at which the test accuracy reached ``target``; ``never`` if it did not."""
    for step, acc in zip(run.result["step"], run.result["test_accuracy"]):
        if acc >= target:
            return step
    return never


def group(runs: list[Run], key: Callable[[RunConfig], Any]) -> dict[Any, list[Run]]:
    """Runs grouped by ``key(config)``, each group in seed order."""
    out: dict[Any, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.config.seed):
        out.setdefault(key(r.config), []).append(r)
    return out
