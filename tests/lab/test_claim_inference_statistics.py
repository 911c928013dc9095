"""inference-statistics: its figures from synthetic runs, and its verdict on clear cases."""

import pytest
from test_claims import history, verdict_of

from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from normlab.lab.claims.inference_statistics import MOMENTA

CLAIM = CLAIMS["inference-statistics"]


def runs(running, one, other=None):
    """Runs of every momentum: `running[momentum][seed]`, batches of one `one[seed]` (the same weights in every momentum)."""
    out = []
    for config in CLAIM.runs(Profile("tiny", (len(one),))):
        s, m = config.seed, config.model.norm_momentum
        value = {"running": running[m][s], "precise": 0.7, "batch 1": one[s], "batch 8": 0.5, "batch all": 0.69}
        if other is not None and m == 0.5:
            value["precise"] = other
        out.append(Run(config, history([0.1, running[m][s]], measures={"inference_statistics": {"step": [40], "value": [value]}})))
    return out


GOOD = {m: [0.68, 0.70, 0.69] for m in MOMENTA}


def test_figures():
    f = CLAIM.summarize(runs({**GOOD, None: [0.5, 0.55, 0.52]}, [0.10, 0.11, 0.10]))
    assert f["chance"] == 0.1
    assert f["test accuracy, cumulative average"]["values"] == [0.5, 0.55, 0.52]
    assert f["test accuracy, running average, momentum 0.1"]["mean"] == pytest.approx(0.69)
    assert f["test accuracy, batch statistics, batch of 1"]["values"] == [0.10, 0.11, 0.10]
    assert f["test accuracy, batch statistics, batch of 8"]["mean"] == pytest.approx(0.5)
    assert f["test accuracy, batch statistics, whole test set"]["mean"] == pytest.approx(0.69)
    assert f["test accuracy, precise statistics (training set)"]["mean"] == pytest.approx(0.7)
    assert f["the same weights in every momentum's run"] is True
    assert CLAIM.summarize(runs(GOOD, [0.1] * 3, other=0.6))["the same weights in every momentum's run"] is False


def test_verdict():
    assert verdict_of(CLAIM, CLAIM.summarize(runs(GOOD, [0.10, 0.11, 0.10]))).verdict == REPRODUCED
    # a batch of one that works (e.g. a model whose batch norm sees many values per channel)
    assert verdict_of(CLAIM, CLAIM.summarize(runs(GOOD, [0.60, 0.62, 0.61]))).verdict == NOT_REPRODUCED
    assert verdict_of(CLAIM, CLAIM.summarize(runs(GOOD, [0.05, 0.15, 0.25]))).verdict == INCONCLUSIVE  # around 1.5x chance
