"""ghost-batches: the same epochs for every arm, the small batch's learning rate chosen on the
validation split, the large batch's by Hoffer et al.'s square-root rule; figures and verdicts on synthetic runs."""

import math

import pytest
from test_claims import verdict_of

from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims import ghost_batches as gb
from normlab.lab.claims.base import Profile
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED

CLAIM = CLAIMS["ghost-batches"]


def test_every_arm_trains_the_same_epochs_at_the_scaled_rate():
    configs = CLAIM.runs(Profile("quick", (2,)))
    assert len(configs) == len(gb.LRS) * len(gb.VARIANTS) * 2
    for c in configs:
        assert c.train_subset == gb.TRAIN_SAMPLES == 1024 and c.batch_size in (16, 512)
        assert c.steps * c.batch_size == 25 * 1024  # 25 epochs: 1600 updates of 16, 50 of 512
        base_lr = gb.small_lr(c)
        assert c.lr == pytest.approx(base_lr * (math.sqrt(32) if c.batch_size == 512 else 1))  # sqrt(512 / 16)
        assert (c.model.norm == "ghost") <= (c.batch_size == 512)
    assert {gb.small_lr(c) for c in configs} == set(gb.LRS)


def result(val, test, steps, every, train=1.0):
    logs = list(range(0, steps + 1, every))
    return {
        "step": logs, "test_accuracy": [0.1] * (len(logs) - 1) + [test], "val_accuracy": [0.1] * (len(logs) - 1) + [val],
        "train_loss": [None] + [1.0] * (len(logs) - 1), "final_test_accuracy": test, "final_val_accuracy": val,
        "final_train_accuracy": train, "diverged": None, "classes": 10, "test_samples": 1000, "probes": {},
    }


def runs(test, val=None):
    """``test[(norm, batch)][small lr]`` (a number, + 0.002 per seed, or one per seed); validation
    accuracy ``val[small lr]`` for every arm."""
    val = val or {0.005: 0.40, 0.01: 0.47, 0.02: 0.45}
    out = []
    for c in CLAIM.runs(Profile("tiny", (3,))):
        lr = gb.small_lr(c)
        t = test[c.model.norm, c.batch_size][lr]
        t = t[c.seed] if isinstance(t, tuple) else t + 0.002 * c.seed
        out.append(Run(c, result(val[lr] + 0.001 * c.seed, t, c.steps, c.eval_every)))
    return out


def test_the_rate_is_chosen_on_validation_and_the_test_split_judges():
    # at 0.02 the test split would tell another story: the large batch beating the small one
    test = {
        ("bn", 16): {0.005: 0.40, 0.01: 0.50, 0.02: 0.44},
        ("bn", 512): {0.005: 0.30, 0.01: 0.45, 0.02: 0.60},
        ("ghost", 512): {0.005: 0.35, 0.01: 0.49, 0.02: 0.61},
    }
    f = CLAIM.summarize(runs(test))
    assert f["learning rate of the small batch, chosen on the validation split"] == 0.01
    assert f["validation accuracy of the small batch by learning rate"]["0.02"]["mean"] == pytest.approx(0.451)
    assert f["test accuracy, small batch (16), BN"]["values"] == pytest.approx([0.50, 0.502, 0.504])
    assert f["test accuracy, large batch (512), BN"]["mean"] == pytest.approx(0.452)
    assert f["gap (small - large batch, BN)"] == pytest.approx(0.05)
    assert f["fraction of the gap ghost BN closes"] == pytest.approx(0.8)
    assert f["updates, small batch (16), BN"] == 64 and f["updates, large batch (512), BN"] == 2  # tiny: one epoch
    assert verdict_of(CLAIM, f).verdict == REPRODUCED
    # chosen on validation at 0.02, the same runs judge otherwise: no gap
    f = CLAIM.summarize(runs(test, val={0.005: 0.40, 0.01: 0.44, 0.02: 0.47}))
    assert f["learning rate of the small batch, chosen on the validation split"] == 0.02
    assert verdict_of(CLAIM, f).verdict == NOT_REPRODUCED


def test_verdicts():
    def arms(small, large, ghost):
        return {("bn", 16): dict.fromkeys(gb.LRS, small), ("bn", 512): dict.fromkeys(gb.LRS, large), ("ghost", 512): dict.fromkeys(gb.LRS, ghost)}

    judge = lambda *a: verdict_of(CLAIM, CLAIM.summarize(runs(arms(*a)))).verdict  # noqa: E731
    assert judge(0.50, 0.45, 0.49) == REPRODUCED
    assert judge(0.50, 0.52, 0.54) == NOT_REPRODUCED  # no gap at the same epochs
    assert judge(0.50, 0.45, 0.44) == NOT_REPRODUCED  # ghost BN does not help
    assert judge(0.50, 0.45, 0.455) == NOT_REPRODUCED  # ghost BN's gain, half a point: too small to matter
    assert judge(0.50, 0.45, (0.43, 0.50, 0.47)) == INCONCLUSIVE  # ghost BN's gain within the seeds' noise


def test_scaled_is_the_square_root_rule():
    assert gb.scaled(0.01, 16) == 0.01 and gb.scaled(0.01, 256) == pytest.approx(0.04) and gb.scaled(0.01, 64) == pytest.approx(0.02)
    assert math.isclose(gb.scaled(0.003, 1024), 0.024)
