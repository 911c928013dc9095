"""higher-learning-rates: the largest rate that trains, and Bjorck et al.'s interaction with rates chosen on validation."""

import math
from dataclasses import replace

import pytest

from normlab.lab.claims import CLAIMS, PROFILES, Run
from normlab.lab.claims.higher_learning_rates import RATES, common_rates
from normlab.lab.stats import NOT_REPRODUCED, REPRODUCED, decide

CLAIM = CLAIMS["higher-learning-rates"]


def result(val, test, diverged=False):
    return {
        "step": [0, 40], "val_accuracy": [0.1, val], "test_accuracy": [0.1, test], "train_loss": [None, 1.0],
        "final_val_accuracy": val, "final_test_accuracy": test, "classes": 10, "val_samples": 1000,
        "test_samples": 1000, "probes": {}, "diverged": {"step": 3, "reason": "the training loss is nan"} if diverged else None,
    }


def judge(accuracies):
    """The claim on its own configs (3 seeds), each run given ``accuracies(norm, lr, seed) -> (val, test, diverged)``."""
    profile = replace(PROFILES["tiny"], rounds=(3,))
    runs = [Run(c, result(*accuracies(c.model.norm, c.lr, c.seed))) for c in CLAIM.runs(profile)]
    figures = CLAIM.summarize(runs)
    return figures, decide(CLAIM.parts(figures))


def bjorck(norm, lr, seed):
    """Alike at small rates (0.3 and below: both about 0.5); BN best at 3 (0.8 on validation), no BN diverging above 1.
    The test split disagrees with validation at 10 for BN, where it reads 0.95: no choice may follow it."""
    jitter = 0.003 * seed
    if lr <= 0.03:
        return 0.15, 0.15 + jitter, False  # neither trains: not "alike" in Bjorck's sense
    if lr <= 0.3:
        return 0.5, 0.5 + jitter, False
    if norm == "bn":
        return {1.0: (0.6, 0.6), 3.0: (0.8, 0.8), 10.0: (0.7, 0.95)}.get(lr, (0.3, 0.3)) + (False,)
    return (0.55, 0.55 + jitter, False) if lr <= 1.0 else (0.1, 0.0, True)


def test_common_rates_are_chosen_on_validation():
    f, v = judge(bjorck)
    assert f["small common rate (smallest at which both train, on validation)"] == 0.1
    assert f["large common rate (BN's best on validation)"] == 3.0  # not 10, the test split's favourite
    # per seed: (0.8 - 0.0) - (0.5 + j - (0.5 + j)) = 0.8
    assert f["BN's advantage in test accuracy at the large rate"]["values"] == pytest.approx([0.8] * 3)
    assert f["BN's advantage in test accuracy at the small rate"]["values"] == pytest.approx([0.0] * 3)
    assert f["interaction: advantage at the large rate - at the small rate"]["values"] == pytest.approx([0.8] * 3)
    assert f["largest learning rate that trains (log10), BN"]["values"] == pytest.approx([math.log10(100)] * 3)
    assert f["largest learning rate that trains (log10), no BN"]["values"] == pytest.approx([0.0] * 3)
    assert f["learning rates that diverged, no BN"] == [r for r in RATES if r > 1]
    assert v.verdict == REPRODUCED, v.explanation


def test_no_interaction_when_the_advantage_is_the_same_at_every_rate():
    def constant(norm, lr, seed):
        base = 0.5 + 0.01 * seed + (0.1 if norm == "bn" else 0.0) + 0.02 * math.log10(lr)
        return base, base, False

    f, v = judge(constant)
    assert f["interaction: advantage at the large rate - at the small rate"]["values"] == pytest.approx([0.0] * 3)
    assert v.parts[1].verdict == NOT_REPRODUCED and v.verdict == NOT_REPRODUCED


def test_bn_best_at_the_small_rate_is_no_interaction():
    def small_is_best(norm, lr, seed):
        val, test, diverged = bjorck(norm, lr, seed)
        return (0.9 if (norm == "bn" and lr == 0.1) else val), test, diverged

    f, v = judge(small_is_best)
    assert f["small common rate (smallest at which both train, on validation)"] == 0.1
    assert f["large common rate (BN's best on validation)"] == 0.1
    assert v.parts[1].verdict == NOT_REPRODUCED


def test_common_rates_rule():
    chance = 0.1
    val = {"bn": dict.fromkeys(RATES, 0.5), "none": dict.fromkeys(RATES, 0.1)}
    assert common_rates(val, chance) == (RATES[0], RATES[0])  # nothing where both train; BN flat: ties to the smallest
    val["none"][1.0] = val["none"][3.0] = 0.3
    val["bn"][30.0] = 0.7
    assert common_rates(val, chance) == (1.0, 30.0)
