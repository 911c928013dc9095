"""The claims the lab tests, one module each, listed in :data:`CLAIMS` in report order.

A claim declares its source, what it measures and its criterion before anything runs,
and turns the runs' numbers into figures and the comparisons its verdict comes from
(see :mod:`.base`, and :mod:`normlab.lab.stats` for the rule). Adding a
claim: write a module with a ``CLAIM = Claim(...)`` and add it to the list below.
"""

from __future__ import annotations

from . import faster_training, higher_learning_rates, saturating_activations, stable_distributions
from . import ghost_batches, init_robustness, placement, regularization, small_batches
from . import bn_only_training, inference_statistics, noisy_bn, recurrent
from .base import PROFILES, Claim, Profile, Run

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
    ]
}

__all__ = ["CLAIMS", "Claim", "Profile", "PROFILES", "Run"]
