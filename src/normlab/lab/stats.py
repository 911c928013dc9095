"""The verdict rule: per-seed values in; reproduced, not reproduced or inconclusive out.

A claim is judged in parts. Each part is a :class:`Comparison` declared in the claim's
code before anything runs: an effect ``d = mean(claimed) - mean(against)`` over seeds
(``against`` may be a fixed number), the ``threshold`` above which the claim holds
(usually 0: "BN needs fewer steps") and the claim's *smallest effect of interest*
``smallest``, in the effect's own units: the effect at which the claim clearly holds.

The interval is Welch's: ``se = sqrt(v_a + v_b)`` with ``v = s^2 / n`` per arm, and
the t quantile at the Welch-Satterthwaite degrees of freedom
``(v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1))``. From its lower end
``low = d - t(1 - a_low) se`` and upper end ``high = d + t(1 - a_high) se``:

* **not reproduced** when ``high < threshold + smallest``: the effect is below the
  smallest one of interest (absent, reversed, or too small to matter), beyond the
  noise: the equivalence zone;
* **reproduced** when ``low > threshold`` (and not the above): an effect in the claimed
  direction, beyond the noise;
* **inconclusive** otherwise: more seeds could tell.

So a claim whose true effect is at most ``threshold`` is called reproduced with
probability at most ``a_low``, and one whose true effect is at least ``threshold +
smallest`` is called not reproduced with probability at most ``a_high``.

*Quantized measures.* A figure may carry a ``resolution`` ``q`` (see :func:`stat`):
the step of the grid its values lie on (a learning-rate grid, the logging interval of
a step count, one test sample of an accuracy). Each arm's variance of the mean is
then at least ``q^2 / 12``, the variance of a uniform error over one grid cell,
however many seeds: when every seed lands in the same cell, their spread (zero) says
nothing about where in the cell the truth lies, and that does not average away.

*Several parts and several looks.* A claim is reproduced when all its parts are (an
intersection-union test: each part at level ``alpha`` keeps the claim at ``alpha``) and
not reproduced when any part is not (a union: each part at ``alpha / parts``). Seeds are
added in rounds until the verdict is decisive (a profile's ``rounds``); each of the
``looks`` planned rounds spends ``1 / looks`` of ``alpha`` on each side (Bonferroni over
the looks: valid whatever the dependence between looks, and for Welch's statistics,
whose joint law across looks group-sequential boundaries would need), so the error
rates above hold for the whole sequence, whatever round it stops at. Hence
``a_low = alpha / looks`` and ``a_high = alpha / (looks * parts)`` (:func:`alphas`).

:func:`simulate` measures all this on simulated experiments whose truth is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import stdtrit  # Student's t quantile, stdtrit(df, q) = t.ppf(q, df); scipy.stats takes seconds to import

__all__ = [
    "ALPHA", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "Comparison", "Part", "Verdict",
    "stat", "compare", "decide", "interval", "classify", "alphas", "simulate", "fmt",
]

ALPHA = 0.05  # each error rate of a claim's verdict, one-sided, over all its rounds
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
_CODES = (INCONCLUSIVE, REPRODUCED, NOT_REPRODUCED)  # classify()'s 0, 1, 2


def fmt(x) -> str:
    """A number as reports print it: thousands as integers, else 3 significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def stat(values, resolution: float = 0.0) -> dict:
    """The figure of per-seed ``values``: ``{"values", "mean", "std", "n", "resolution"}``.

    ``std`` is the sample standard deviation (n - 1; 0 for one value); ``resolution`` the
    grid step of a quantized measure (0: continuous), which floors the standard error.
    """
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n if n else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0
    return {"values": v, "mean": mean, "std": std, "n": n, "resolution": float(resolution)}


@dataclass(frozen=True)
class Comparison:
    """One part of a claim, declared before the runs: ``mean(claimed) - mean(against)``
    should exceed ``threshold``, and ``threshold + smallest`` is an effect that clearly does."""

    what: str
    claimed: dict  # a figure of stat()
    against: dict  # a figure of stat(), or {"mean": x, "n": inf} for a fixed number
    smallest: float
    threshold: float = 0.0
    unit: str = ""


def _figure(side) -> dict:
    if isinstance(side, dict):
        return side
    if isinstance(side, (list, tuple)):
        return stat(side)
    return {"values": [], "mean": float(side), "std": 0.0, "n": math.inf, "resolution": 0.0}


def compare(claimed, against, *, what: str, smallest: float, threshold: float = 0.0, unit: str = "") -> Comparison:
    """A part of a claim: ``claimed`` against ``against`` (figures of :func:`stat`, lists of
    per-seed values, or a fixed number), the claim holding above ``threshold``, with the
    smallest effect of interest ``smallest`` (positive, in the effect's units)."""
    if not smallest > 0:
        raise ValueError(f"compare({what!r}): the smallest effect of interest must be positive, got {smallest}")
    return Comparison(what, _figure(claimed), _figure(against), float(smallest), float(threshold), unit)


def interval(mean_a, var_a, n_a, mean_b, var_b, n_b, alpha_low, alpha_high, res_a=0.0, res_b=0.0):
    """Welch's interval for ``mean_a - mean_b``, elementwise over NumPy arrays (one experiment per element).

    ``var_*`` are the sample variances, ``n_*`` the seeds (``inf`` for a fixed number),
    ``res_*`` the resolutions. Returns ``(d, low, high, se, df)``; ``low`` and ``high`` are
    NaN where an arm has fewer than two values.
    """
    mean_a, var_a, n_a, mean_b, var_b, n_b, res_a, res_b = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (mean_a, var_a, n_a, mean_b, var_b, n_b, res_a, res_b))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        v = [np.where(np.isinf(n), 0.0, np.maximum(var / n, res**2 / 12)) for var, n, res in ((var_a, n_a, res_a), (var_b, n_b, res_b))]
        se2 = v[0] + v[1]
        dof_terms = sum(np.where(np.isinf(n), 0.0, vi**2 / (n - 1)) for vi, n in zip(v, (n_a, n_b)))
        df = np.where(dof_terms > 0, se2**2 / dof_terms, np.inf)
        se = np.sqrt(se2)
        d = mean_a - mean_b
        t_low, t_high = (np.where(se > 0, stdtrit(df, 1 - a), 0.0) for a in (alpha_low, alpha_high))
        noisy = (n_a < 2) | (n_b < 2)
        low = np.where(noisy, np.nan, d - t_low * se)
        high = np.where(noisy, np.nan, d + t_high * se)
    return d, low, high, se, df


def classify(low, high, threshold, smallest):
    """The verdicts, elementwise: 0 inconclusive, 1 reproduced, 2 not reproduced (see the module docstring)."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    out = np.zeros(np.broadcast(low, high).shape, dtype=np.int8)
    out[low > threshold] = 1
    out[high < threshold + smallest] = 2  # the equivalence zone decides a conflict: too small to matter
    return out


@dataclass(frozen=True)
class Part:
    """A decided :class:`Comparison`: the effect, its interval, the seeds, the margin and the verdict."""

    what: str
    verdict: str
    effect: float
    low: float
    high: float
    n: tuple  # seeds of each arm (None: a fixed number)
    threshold: float
    smallest: float
    level: float  # the interval's coverage, 1 - a_low - a_high
    unit: str = ""

    def text(self) -> str:
        u = f" {self.unit}" if self.unit else ""
        n = " + ".join(str(x) for x in self.n if x is not None)
        if not n:  # both sides fixed numbers (a count against a source's): nothing varies with a seed
            return (f"{self.what}: {fmt(self.effect)}{u}, exact (no seeds); the claim needs > {fmt(self.threshold)}, "
                    f"smallest effect of interest {fmt(self.smallest)}")
        if not math.isfinite(self.low):
            spread = "one seed per arm cannot measure the noise" if self.n and min(x for x in self.n if x is not None) < 2 else "not finite"
            return f"{self.what}: {fmt(self.effect)}{u} ({spread}), n = {n}"
        return (
            f"{self.what}: {fmt(self.effect)}{u}, {self.level:.1%} interval [{fmt(self.low)}, {fmt(self.high)}], "
            f"n = {n}; the claim needs > {fmt(self.threshold)}, smallest effect of interest {fmt(self.smallest)}"
        )

    def as_dict(self) -> dict:
        return {
            "what": self.what, "verdict": self.verdict, "effect": self.effect, "low": _json(self.low),
            "high": _json(self.high), "n": list(self.n), "threshold": self.threshold, "smallest": self.smallest,
            "level": self.level, "unit": self.unit,
        }


def _json(x: float):
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Verdict:
    verdict: str  # REPRODUCED, NOT_REPRODUCED or INCONCLUSIVE
    explanation: str
    parts: tuple[Part, ...] = field(default=())


def alphas(looks: int, parts: int, alpha: float = ALPHA) -> tuple[float, float]:
    """``(a_low, a_high)``: the one-sided levels of each look's interval ends."""
    return alpha / looks, alpha / (looks * parts)


def decide(comparisons, look: int = 1, looks: int = 1, alpha: float = ALPHA) -> Verdict:
    """The verdict of a claim made of ``comparisons`` at round ``look`` of ``looks`` (see the module docstring)."""
    comparisons = [comparisons] if isinstance(comparisons, Comparison) else list(comparisons)
    if not 1 <= look <= looks:
        raise ValueError(f"decide: look must lie in 1..{looks}, got {look}")
    a_low, a_high = alphas(looks, len(comparisons), alpha)
    parts = []
    for c in comparisons:
        a, b = c.claimed, c.against
        d, low, high, _, _ = interval(
            a["mean"], a["std"] ** 2, a["n"], b["mean"], b["std"] ** 2, b["n"], a_low, a_high,
            a.get("resolution", 0.0), b.get("resolution", 0.0),
        )
        d, low, high = float(d), float(low), float(high)
        code = int(classify(low, high, c.threshold, c.smallest)) if math.isfinite(d) else 0
        n = tuple(None if math.isinf(s["n"]) else int(s["n"]) for s in (a, b))
        parts.append(Part(c.what, _CODES[code], d, low, high, n, c.threshold, c.smallest, 1 - a_low - a_high, c.unit))
    kinds = {p.verdict for p in parts}
    verdict = REPRODUCED if kinds == {REPRODUCED} else NOT_REPRODUCED if NOT_REPRODUCED in kinds else INCONCLUSIVE
    if len(parts) == 1:
        explanation = f"{parts[0].text()}: {parts[0].verdict}"
    else:
        explanation = "; ".join(f"{p.text()} [{p.verdict}]" for p in parts)
    return Verdict(verdict, explanation, tuple(parts))


def simulate(
    effect: float,
    *,
    smallest: float,
    rounds=(10,),
    sd: float = 1.0,
    sd_against: float | None = None,
    threshold: float = 0.0,
    parts: int = 1,
    resolution: float = 0.0,
    experiments: int = 20000,
    seed: int = 0,
) -> dict:
    """The rule's operating characteristics, by simulation: ``experiments`` experiments whose
    two arms are normal with standard deviations ``sd`` and ``sd_against`` (default ``sd``)
    and means ``effect`` apart, seeds added in ``rounds`` (cumulative seeds per arm) until
    the verdict is decisive, judged as one part of a claim of ``parts`` parts. With
    ``resolution`` each value is rounded to that grid (at a random offset per experiment).

    Returns the fractions ``{"reproduced", "not reproduced", "inconclusive"}`` and
    ``"seeds"``, the mean seeds per arm used.
    """
    rng = np.random.default_rng(seed)
    rounds = tuple(rounds)
    n_max = rounds[-1]
    sd_b = sd if sd_against is None else sd_against
    a = rng.normal(effect, sd, (experiments, n_max))
    b = rng.normal(0.0, sd_b, (experiments, n_max))
    if resolution:
        offset = rng.uniform(0, resolution, (experiments, 1))
        a, b = (np.round((x + offset) / resolution) * resolution - offset for x in (a, b))
    a_low, a_high = alphas(len(rounds), parts)
    verdict = np.zeros(experiments, dtype=np.int8)
    seeds = np.full(experiments, n_max)
    open_ = np.ones(experiments, dtype=bool)
    for n in rounds:
        xa, xb = a[open_, :n], b[open_, :n]
        _, low, high, _, _ = interval(
            xa.mean(1), xa.var(1, ddof=1), n, xb.mean(1), xb.var(1, ddof=1), n, a_low, a_high, resolution, resolution
        )
        code = classify(low, high, threshold, smallest)
        idx = np.flatnonzero(open_)
        verdict[idx] = code
        seeds[idx] = n
        open_[idx[code != 0]] = False
    return {
        REPRODUCED: float(np.mean(verdict == 1)),
        NOT_REPRODUCED: float(np.mean(verdict == 2)),
        INCONCLUSIVE: float(np.mean(verdict == 0)),
        "seeds": float(seeds.mean()),
    }
