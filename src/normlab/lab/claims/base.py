"""What every claim is made of, and the one rule that turns numbers into a verdict.

A claim is a :class:`Claim`: its source and statement, what is measured and the
criterion, all declared in code before anything runs, and four functions:

* ``runs(profile)``: the training runs it needs (:class:`~normlab.lab.train.RunConfig`),
* ``summarize(runs)``: the measured figures from those runs' results,
* ``verdict(figures)``: a :class:`Verdict` computed from the figures alone,
* ``plot(runs, figures)``: a matplotlib figure for the report.

``summarize``, ``verdict`` and ``plot`` see only what ``results.json`` holds, so the
report can be rebuilt from it at any time.

The verdict rule (:func:`compare`): the effect ``d`` is the difference of the two
means over seeds, in the direction the claim predicts, and ``se`` its standard error
``sqrt(s_a^2 / n_a + s_b^2 / n_b)``. With the interval ``d +- 2 se``:
*reproduced* when it lies entirely above the claim's minimal effect, *not reproduced*
when it lies entirely at or below it, *inconclusive* otherwise: the effect is within
the seeds' noise. A single seed measures no noise and is always inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..train import RunConfig

__all__ = [
    "Claim", "Profile", "PROFILES", "Run", "Verdict", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "SKIPPED",
    "fmt", "stat", "ratio", "compare", "combine", "steps_to", "group",
]

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
SKIPPED = "skipped"  # not a verdict: the claim's networks do not fit the data (normlab.lab.reproduce.plan)


@dataclass(frozen=True)
class Profile:
    """How much work to spend: ``tiny`` (tests, seconds), ``quick`` (the default, minutes) or ``full``."""

    name: str
    seeds: int
    data: str = "mnist1d"

    def pick(self, tiny, quick, full):
        """The value for this profile."""
        return {"tiny": tiny, "quick": quick, "full": full}[self.name]


PROFILES = {"tiny": Profile("tiny", 2), "quick": Profile("quick", 3), "full": Profile("full", 5)}


@dataclass(frozen=True)
class Run:
    config: RunConfig
    result: dict


@dataclass(frozen=True)
class Verdict:
    verdict: str  # REPRODUCED, NOT_REPRODUCED or INCONCLUSIVE
    explanation: str


@dataclass(frozen=True)
class Claim:
    name: str  # as typed on the command line
    source: str  # where the claim is made
    statement: str  # what the source says
    measured: str  # what we measure
    criterion: str  # when we call it reproduced
    runs: Callable[[Profile], list[RunConfig]]
    summarize: Callable[[list[Run]], dict[str, Any]]
    verdict: Callable[[dict[str, Any]], Verdict]
    plot: Callable[[list[Run], dict[str, Any]], Any]


def fmt(x) -> str:
    """A number as reports print it: thousands as integers, else 3 significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def stat(values) -> dict:
    """``{"values", "mean", "std", "n"}`` of per-seed values (std with n - 1; 0 for one value)."""
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n if n else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    return {"values": v, "mean": mean, "std": std, "n": n}


def compare(claimed, against, *, min_effect: float = 0.0, what: str) -> Verdict:
    """Is ``mean(claimed) - mean(against)`` above ``min_effect``, beyond the seeds' noise?

    Each side is a figure of :func:`stat`, a list of per-seed values, or a plain number
    (a fixed threshold, no noise).
    """
    sides = [_noisy(s) for s in (claimed, against)]
    d = sides[0]["mean"] - sides[1]["mean"]
    if any(s["n"] < 2 for s in sides):
        return Verdict(INCONCLUSIVE, f"{what}: {fmt(d)}, but one seed cannot tell an effect from noise")
    se = math.sqrt(sum(s["std"] ** 2 / s["n"] for s in sides if math.isfinite(s["n"])))
    low, high = d - 2 * se, d + 2 * se
    text = f"{what}: {fmt(d)} ± {fmt(2 * se)} (2 standard errors over seeds); the claim needs more than {fmt(min_effect)}"
    if low > min_effect:
        return Verdict(REPRODUCED, text)
    if high <= min_effect:
        return Verdict(NOT_REPRODUCED, text)
    return Verdict(INCONCLUSIVE, text + ", and the seeds' noise covers both")


def _noisy(side) -> dict:
    """A side of :func:`compare` as mean, std and n; a plain number has no noise (n infinite)."""
    if isinstance(side, dict):
        side = side["values"]
    return stat(side) if isinstance(side, (list, tuple)) else {"mean": float(side), "std": 0.0, "n": math.inf}


def combine(*verdicts: Verdict) -> Verdict:
    """All parts reproduced: reproduced; any part not reproduced: not reproduced; else inconclusive."""
    kinds = {v.verdict for v in verdicts}
    verdict = REPRODUCED if kinds == {REPRODUCED} else NOT_REPRODUCED if NOT_REPRODUCED in kinds else INCONCLUSIVE
    return Verdict(verdict, "; ".join(f"{v.explanation} [{v.verdict}]" for v in verdicts))


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
