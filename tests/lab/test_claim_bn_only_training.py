"""bn-only-training: its figures from synthetic runs, and its verdict on clear cases."""

from test_claims import history, verdict_of

from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from normlab.lab.claims.bn_only_training import SPEC, norm_parameters

CLAIM = CLAIMS["bn-only-training"]


def runs(accuracy, gammas=None):
    """`accuracy[trainable]` per seed; every run's gammas are `gammas` (default: 0, 0.05, 0.5, 1)."""
    out = []
    for config in CLAIM.runs(Profile("tiny", (3,))):
        g = gammas or [0.0, -0.05, 0.5, 1.0]
        acc = accuracy[config.trainable][config.seed]
        out.append(Run(config, history([0.1, acc], measures={"gammas": {"step": [30], "value": [g]}})))
    return out


GOOD = {"norm": [0.52, 0.53, 0.55], "random": [0.44, 0.45, 0.46], "all": [0.97, 0.98, 0.98]}


def test_figures():
    f = CLAIM.summarize(runs(GOOD))
    assert f["trained parameters (BN only; random)"] == norm_parameters(SPEC) == 384
    assert f["final test accuracy, BN only"]["values"] == [0.52, 0.53, 0.55]
    assert f["fraction of |gamma| < 0.01, BN only"]["mean"] == 0.25
    assert f["fraction of |gamma| < 0.1, all parameters"]["mean"] == 0.5  # |-0.05| counts as near zero
    assert verdict_of(CLAIM, f).verdict == REPRODUCED


def test_verdict():
    assert verdict_of(CLAIM, CLAIM.summarize(runs({**GOOD, "random": [0.60, 0.62, 0.61]}))).verdict == NOT_REPRODUCED
    assert verdict_of(CLAIM, CLAIM.summarize(runs({**GOOD, "norm": [0.15, 0.18, 0.2]}))).verdict == NOT_REPRODUCED  # near chance
    assert verdict_of(CLAIM, CLAIM.summarize(runs({**GOOD, "norm": [0.40, 0.55, 0.45]}))).verdict == INCONCLUSIVE
