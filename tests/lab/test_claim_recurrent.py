"""recurrent: its figures from synthetic runs, and its verdict on clear cases."""

import pytest
from test_claims import history, verdict_of

from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

CLAIM = CLAIMS["recurrent"]


def runs(accuracy):
    """`accuracy[norm]` = per seed, (accuracy at 40, 60, 80 steps)."""
    out = []
    for config in CLAIM.runs(Profile("tiny", (3,))):
        a40, a60, a80 = accuracy[config.model.norm][config.seed]
        value = {"40": a40, "60": a60, "80": a80}
        out.append(Run(config, history([0.1, a40], measures={"longer_sequences": {"step": [30], "value": [value]}})))
    return out


def same(*accuracies):
    return [accuracies] * 3


def test_figures_and_verdict():
    accuracy = {
        "none": same(0.7, 0.6, 0.5),
        "bn": [(0.70, 0.5, 0.4), (0.72, 0.5, 0.4), (0.71, 0.5, 0.4)],
        "bn_step": [(0.78, 0.5, 0.30), (0.79, 0.5, 0.31), (0.80, 0.5, 0.29)],
        "ln": [(0.78, 0.7, 0.60), (0.79, 0.7, 0.60), (0.77, 0.7, 0.61)],
    }
    f = CLAIM.summarize(runs(accuracy))
    assert f["test accuracy at 80 steps, LayerNorm"]["values"] == [0.60, 0.60, 0.61]
    assert f["accuracy lost from 40 to 80 steps, BN, statistics per step"]["values"] == pytest.approx([0.48, 0.48, 0.51])
    assert f["accuracy lost from 40 to 80 steps, no normalization"]["mean"] == pytest.approx(0.2)
    assert verdict_of(CLAIM, f).verdict == REPRODUCED
    shared_wins = {**accuracy, "bn": same(0.85, 0.5, 0.4)}
    assert verdict_of(CLAIM, CLAIM.summarize(runs(shared_wins))).verdict == NOT_REPRODUCED
    ln_loses_as_much = {**accuracy, "ln": [(0.78, 0.5, 0.28), (0.79, 0.5, 0.32), (0.80, 0.5, 0.35)]}
    assert verdict_of(CLAIM, CLAIM.summarize(runs(ln_loses_as_much))).verdict == INCONCLUSIVE
