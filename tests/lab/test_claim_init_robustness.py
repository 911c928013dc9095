"""init-robustness: each network and scheme at its learning rate of best validation accuracy,
the sensitivity over the schemes, and the verdicts, on synthetic runs."""

import pytest
from test_claims import verdict_of

from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims import init_robustness as ir
from normlab.lab.claims.base import Profile
from normlab.lab.models import INITS
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

CLAIM = CLAIMS["init-robustness"]


def result(test, val, diverged=None):
    return {
        "step": [0, 2], "test_accuracy": [0.1, test], "val_accuracy": [0.1, val], "train_loss": [None, 1.0],
        "final_test_accuracy": test, "final_val_accuracy": val, "final_train_accuracy": 1.0,
        "diverged": diverged, "classes": 10, "test_samples": 1000, "probes": {},
    }


def runs(outcome):
    """The tiny profile's configs (3 seeds), each given ``outcome(config) -> result``."""
    return [Run(c, outcome(c)) for c in CLAIM.runs(Profile("tiny", (3,)))]


def test_every_scheme_at_every_rate():
    configs = CLAIM.runs(Profile("quick", (2,)))
    assert {c.model.init for c in configs} == set(INITS) == {"torch", "lecun", "glorot", "he"}
    assert {(c.model.depth, c.model.width, c.model.activation) for c in configs} == {(6, 100, "relu")}
    assert len(configs) == 2 * 4 * len(ir.LRS) * 2
    assert {(c.model.norm, c.model.init, c.lr) for c in configs} == {(n, i, lr) for n in ir.NORMS for i in INITS for lr in ir.LRS}


def test_each_arm_is_judged_at_its_rate_of_best_validation_accuracy():
    """The validation split chooses the rate (here the middle one for every arm but the plain network
    under torch's default, which trains best at the highest); the test split at the chosen rates gives
    the figures. Chosen on the test split instead, the plain network's default would have looked as good
    as BN's (0.6 at the lowest rate)."""
    lo, mid, hi = ir.LRS

    def outcome(c):
        j = 0.01 * c.seed
        if c.model.norm == "bn":
            return result(0.6 + j, 0.6 if c.lr == mid else 0.5)
        if c.model.init == "torch":
            return result({lo: 0.6, mid: 0.2, hi: 0.3}[c.lr] + j, 0.55 if c.lr == hi else 0.3)
        if c.lr == hi:
            return result(0.0, 0.0, diverged={"step": 3, "reason": "the training loss is nan"})
        return result(0.5 + j, 0.5 if c.lr == mid else 0.4)

    f = CLAIM.summarize(runs(outcome))
    assert f["learning rate chosen on the validation split, no BN"] == {"torch's default": hi, "LeCun": mid, "Glorot": mid, "He": mid}
    assert f["learning rate chosen on the validation split, BN"] == dict.fromkeys(ir.SCHEMES.values(), mid)
    assert f["final test accuracy by scheme, no BN"]["torch's default"]["values"] == pytest.approx([0.3, 0.31, 0.32])
    assert f["final test accuracy by scheme, no BN"]["He"]["mean"] == pytest.approx(0.51)
    # per seed: best 0.5 + j (LeCun, Glorot, He), worst 0.3 + j (the default)
    expected = [0.2 / (0.4 + 0.01 * s) for s in range(3)]
    assert f["sensitivity (best - worst) / (best - chance), no BN"]["values"] == pytest.approx(expected)
    assert f["range of final test accuracy (best - worst scheme), no BN"]["values"] == pytest.approx([0.2] * 3)
    assert f["sensitivity (best - worst) / (best - chance), BN"]["values"] == pytest.approx([0.0] * 3)
    assert f["runs that diverged at the chosen rates, no BN"] == 0  # the diverged runs at the highest rate were not chosen
    assert verdict_of(CLAIM, f).verdict == REPRODUCED


def test_verdicts_and_the_diverged():
    def outcome(c, plain_worst=(0.45, 0.45, 0.45), bn_worst=(0.6, 0.61, 0.62)):
        j = 0.01 * c.seed
        worst = c.model.init == "torch"
        if c.model.norm == "bn":
            return result(bn_worst[c.seed] if worst else 0.6 + j, 0.6)
        return result(plain_worst[c.seed] if worst else 0.5 + j, 0.5)

    judge = lambda **kw: verdict_of(CLAIM, CLAIM.summarize(runs(lambda c: outcome(c, **kw))))  # noqa: E731
    assert judge().verdict == REPRODUCED
    assert judge(bn_worst=(0.5, 0.51, 0.52)).verdict == NOT_REPRODUCED  # BN as sensitive as the plain network
    assert judge(plain_worst=(0.5, 0.51, 0.52)).verdict == NOT_REPRODUCED  # neither is sensitive
    assert judge(plain_worst=(0.49, 0.40, 0.46)).verdict == INCONCLUSIVE  # within the seeds' noise

    def diverging(c):  # the plain network diverges under He's scheme at every rate: it counts at chance
        if c.model.norm == "none" and c.model.init == "he":
            return result(0.0, 0.0, diverged={"step": 3, "reason": "the training loss is nan"})
        return outcome(c)

    f = CLAIM.summarize(runs(diverging))
    assert f["final test accuracy by scheme, no BN"]["He"]["mean"] == pytest.approx(0.1)
    assert f["sensitivity (best - worst) / (best - chance), no BN"]["values"] == pytest.approx([1.0] * 3)
    assert f["runs that diverged at the chosen rates, no BN"] == 3


def test_sensitivity():
    assert ir.sensitivity(0.6, 0.35, 0.1) == pytest.approx(0.5)
    assert ir.sensitivity(0.1, 0.05, 0.1) == 1.0  # learns nothing under any scheme
