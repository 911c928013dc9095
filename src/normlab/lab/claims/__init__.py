"""The claims the lab tests, one module each, listed in :data:`CLAIMS` in report order.

A claim declares its source, what it measures and its criterion before anything runs,
and turns the runs' numbers into figures and the comparisons its verdict comes from
(see :mod:`.base`, and :mod:`normlab.lab.stats` for the rule). Adding a
claim: write a module with a ``CLAIM = Claim(...)`` and add it to the list below.
The source experiments as written (:data:`SOURCES`, in :mod:`.sources`) are claims
too, run by the sources profile; :func:`everything` holds both.
"""

from __future__ import annotations

from . import faster_training, higher_learning_rates, saturating_activations, stable_distributions
from . import ghost_batches, init_robustness, placement, regularization, small_batches
from . import bn_only_training, inference_statistics, noisy_bn, recurrent
from . import inference_overhead, learning_rate_tuning, shifted_data, vanishing_gradients
from .base import PROFILES, Claim, Profile, Run
from .sources import SOURCES

CLAIMS: dict[str, Claim] = {
    c.name: c
    for c in [
        faster_training.CLAIM,
        stable_distributions.CLAIM,
        higher_learning_rates.CLAIM,
        saturating_activations.CLAIM,
        init_robustness.CLAIM,
        regularization.CLAIM,
        placement.CLAIM,
        small_batches.CLAIM,
        ghost_batches.CLAIM,
        noisy_bn.CLAIM,
        inference_statistics.CLAIM,
        recurrent.CLAIM,
        bn_only_training.CLAIM,
        inference_overhead.CLAIM,
        vanishing_gradients.CLAIM,
        learning_rate_tuning.CLAIM,
        shifted_data.CLAIM,
    ]
}


def everything() -> dict[str, Claim]:
    """The claims and the source experiments, by name (read at the call: tests may add to either)."""
    return {**CLAIMS, **SOURCES}


def for_profile(profile: str, names: list[str] | None = None) -> list[Claim]:
    """The claims ``names`` that the profile named ``profile`` runs, by default all of them:
    the source experiments in ``sources``, the claims in ``quick`` and ``full``, and either
    in ``tiny`` (a test budget; by default the claims). Raises ``ValueError`` naming a name
    that is unknown or that the profile does not run."""
    every = everything()
    default = SOURCES if profile == "sources" else CLAIMS
    allowed = every if profile == "tiny" else default
    names = list(default) if names is None else list(names)
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(
            f"unknown claim(s) {', '.join(unknown)}; the claims are: {', '.join(CLAIMS)}; "
            f"the source experiments (profile sources): {', '.join(SOURCES)}"
        )
    wrong = [n for n in names if n not in allowed]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} cannot run in the {profile} profile, which runs {', '.join(allowed)}")
    return [every[n] for n in names]


__all__ = ["CLAIMS", "SOURCES", "everything", "for_profile", "Claim", "Profile", "PROFILES", "Run"]
