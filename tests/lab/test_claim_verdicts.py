"""Verdicts of regularization and small-batches on synthetic results.

Each claim's summarize + verdict is fed runs whose numbers are chosen here, so the
expected figures and verdicts are known: a clear effect (reproduced), its absence or
reverse (not reproduced), and an effect within the seeds' noise (inconclusive). The
same claims on real (tiny) runs are tested in test_claims.py.
"""

import math

import pytest

from normlab.lab.claims import CLAIMS, PROFILES, Run
from test_claims import verdict_of

from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED


def result(test, train=1.0, diverged=None, step=(0, 100), curve=None):
    return {
        "step": list(step),
        "test_accuracy": list(curve) if curve else [0.1] * (len(step) - 1) + [test],
        "train_loss": [None] + [1.0] * (len(step) - 1),
        "final_test_accuracy": test,
        "final_train_accuracy": train,
        "diverged": diverged,
        "classes": 10,
        "probes": {},
    }


def runs_of(claim, outcome):
    """The claim's tiny-profile configs (3 seeds), each given ``outcome(config) -> result``."""
    from dataclasses import replace

    profile = replace(PROFILES["tiny"], rounds=(3,))
    return [Run(c, outcome(c)) for c in CLAIMS[claim].runs(profile)]


def judge(claim, outcome):
    figures = CLAIMS[claim].summarize(runs_of(claim, outcome))
    return figures, verdict_of(CLAIMS[claim], figures)


# --- regularization --------------------------------------------------------------------


def test_regularization_two_parts():
    def outcome(c, bn_test=0.45, both_test=0.5):
        test = {("none", 0.0): 0.35, ("bn", 0.0): bn_test, ("none", 0.5): 0.42, ("bn", 0.5): both_test}
        return result(test[c.model.norm, c.model.dropout] + 0.01 * c.seed, train=1.0)

    f, v = judge("regularization", outcome)
    assert f["gap (training - test), none"]["values"] == pytest.approx([0.65, 0.64, 0.63])
    assert f["gap (training - test), BN"]["mean"] == pytest.approx(0.54)
    assert v.verdict == REPRODUCED, v.explanation
    # BN widens the gap
    assert judge("regularization", lambda c: outcome(c, bn_test=0.30))[1].verdict == NOT_REPRODUCED
    # dropout lowers the BN network's test accuracy
    assert judge("regularization", lambda c: outcome(c, both_test=0.40))[1].verdict == NOT_REPRODUCED
    # dropout's gain on top of BN within the seeds' noise
    f, v = judge("regularization", lambda c: outcome(c, both_test=0.45 + (0.04, -0.03, 0.02)[c.seed]))
    assert v.verdict == INCONCLUSIVE, v.explanation


# --- small-batches ---------------------------------------------------------------------


def test_small_batches_parts():
    def outcome(c, bn_at_2=0.45, gn_slope=0.0, renorm_at_2=0.35):
        b, jitter = c.batch_size, 0.002 * c.seed
        if c.model.norm == "bn":  # error 0.30 from batch 8 up, rising below
            error = {2: bn_at_2, 4: 0.35}.get(b, 0.30)
        elif c.model.norm == "renorm":
            error = {2: renorm_at_2, 4: 0.32}.get(b, 0.30)
        else:
            error = 0.32 + gn_slope * math.log2(32 / b)
        return result(1 - error - jitter)

    f, v = judge("small-batches", outcome)
    assert f["degradation (error at batch 2 - at 32), BN"]["mean"] == pytest.approx(0.15)
    assert f["degradation (error at batch 2 - at 32), GN"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert f["test error by batch size, LN"]["64"]["mean"] == pytest.approx(0.32 + 0.002)
    assert v.verdict == REPRODUCED, v.explanation
    # BN does not degrade
    assert judge("small-batches", lambda c: outcome(c, bn_at_2=0.30))[1].verdict == NOT_REPRODUCED
    # nor does it, while GN and LN gain from the small batches' extra steps: BN still "degrades more than GN",
    # but the claim's first part, BN's own degradation, fails
    f, v = judge("small-batches", lambda c: outcome(c, bn_at_2=0.30, gn_slope=-0.0375, renorm_at_2=0.25))
    assert f["degradation (error at batch 2 - at 32), GN"]["mean"] == pytest.approx(-0.15)
    assert v.verdict == NOT_REPRODUCED and v.explanation.count("[reproduced]") == 3, v.explanation
    # GN and LN degrade as much as BN (0.0375 per halving: 0.15 from 32 to 2)
    assert judge("small-batches", lambda c: outcome(c, gn_slope=0.0375))[1].verdict == NOT_REPRODUCED
    # Renorm worse than BN at batch 2
    assert judge("small-batches", lambda c: outcome(c, renorm_at_2=0.50))[1].verdict == NOT_REPRODUCED
    # Renorm's gain within the noise
    f, v = judge("small-batches", lambda c: outcome(c, renorm_at_2=(0.40, 0.50, 0.42)[c.seed]))
    assert v.verdict == INCONCLUSIVE, v.explanation
