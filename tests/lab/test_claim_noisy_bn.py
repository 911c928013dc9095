"""noisy-bn: its figures from synthetic runs, and its verdict on clear cases."""

import pytest
from test_claims import history, verdict_of

from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from normlab.lab.claims.noisy_bn import VARIANTS, landscape
from normlab.lab.measures import ETA_MULTIPLES

CLAIM = CLAIMS["noisy-bn"]


def result(accuracy, ics=0.5, loss=(1.0, 1.2, 1.5), change=(1.0, 2.0), beta=(5.0, 10.0), shift=0.0, relative=None):
    """A run logged at steps 0 and 100: final accuracy, ICS l2 per layer, loss along the gradient, gradient changes,
    betas, and betas in the layers' units (by default 10 times the raw ones)."""
    def grid(values):  # one value per step size: the given ones, then the last repeated
        return list(values) + [values[-1]] * (len(ETA_MULTIPLES) - len(values))

    smooth = {
        "loss": loss[0], "gradient_norm": 1.0, "eta": [0.1 * m for m in ETA_MULTIPLES],
        "loss_along": grid(loss[1:]), "gradient_change": grid(change), "beta": grid(beta),
        "beta_relative": grid(relative or [10 * b for b in beta]),
    }
    probe = [[[-1, 0, 1]] * 10, [[-1 + shift, shift, 1 + shift]] * 10]
    return history(
        [0.1, accuracy],
        probes={"last_activation_input": probe},
        measures={
            "ics": {"step": [0, 100], "value": [{"l2": [9.0, 9.0], "cos": [0.0, 0.0]}, {"l2": [ics, ics], "cos": [0.9, 0.7]}]},
            "smoothness": {"step": [0, 100], "value": [{**smooth, "loss_along": grid([50.0, 60.0])}, smooth]},
        },
    )


def runs(results):
    """The claim's own configs (tiny profile, 3 seeds) with the given results per variant and seed."""
    out = []
    for config in CLAIM.runs(Profile("tiny", (3,))):
        label = next(k for k, v in VARIANTS.items() if v == (config.model.norm, config.model.noise))
        out.append(Run(config, results[label][config.seed]))
    return out


def smooth_bn(acc, relative=None):
    return result(acc, loss=(1.0, 1.1, 1.2), change=(0.5, 1.0), beta=(2.0, 3.0), relative=relative)


def rough(acc):
    return result(acc, loss=(1.0, 2.0, 4.0), change=(3.0, 6.0), beta=(20.0, 30.0))


def test_landscape_of_one_log():
    one = {"loss": 1.0, "loss_along": [0.5, None, 3.0], "gradient_change": [None, 2.0], "beta": [4.0, None], "beta_relative": [1, 7]}
    assert landscape(one) == {"loss range": 2.5, "gradient change": 2.0, "beta": 4.0, "beta relative": 7}
    nothing = {"loss": None, "loss_along": [None], "gradient_change": [None], "beta": [None], "beta_relative": [None]}
    assert landscape(nothing) == dict.fromkeys(("loss range", "gradient change", "beta", "beta relative"))


def test_figures_average_the_logs_after_step_0():
    f = CLAIM.summarize(runs({
        "BN": [smooth_bn(0.70), smooth_bn(0.71), smooth_bn(0.69)],
        "noisy BN": [result(0.69, shift=1.0)] * 3,
        "no BN": [rough(0.60), rough(0.61), rough(0.59)],
        "no BN + noise": [rough(0.40)] * 3,
    }))
    assert f["loss range, BN"]["values"] == pytest.approx([0.2] * 3)  # step 0's landscape (50, 60) left out
    assert f["loss range, no BN"]["values"] == pytest.approx([3.0] * 3)
    assert f["gradient change, BN"]["mean"] == 1.0 and f["beta, no BN"]["mean"] == 30.0
    assert list(f["beta by step size (x learning rate), no BN"]) == ["0.707", "1", "1.41"]
    assert f["beta by step size (x learning rate), no BN"]["0.707"]["mean"] == 20.0
    assert f["beta by step size (x learning rate), no BN"]["1.41"]["mean"] == 30.0
    assert f["beta relative by step size (x learning rate), BN"]["1"]["mean"] == 30.0
    assert f["beta relative, no BN"]["mean"] == 300.0
    # the verdict compares ratios: log10 of each run's figure
    assert f["log10 beta, no BN"]["values"] == pytest.approx([1.4771] * 3, abs=1e-4)
    assert f["log10 beta relative, BN"]["values"] == pytest.approx([1.4771] * 3, abs=1e-4)
    assert f["ICS l2, noisy BN"]["mean"] == 0.5 and f["ICS cos, BN"]["mean"] == pytest.approx(0.8)
    assert f["drift of the last layer's input, noisy BN"]["mean"] == 1.0 and f["drift of the last layer's input, BN"]["mean"] == 0
    assert f["final test accuracy, no BN + noise"]["mean"] == pytest.approx(0.4)
    assert verdict_of(CLAIM, f).verdict == REPRODUCED


def test_verdict():
    def verdict(bn, noisy, plain, bn_landscape=smooth_bn, plain_landscape=rough):
        return verdict_of(CLAIM, CLAIM.summarize(runs({
            "BN": [bn_landscape(a) for a in bn],
            "noisy BN": [result(a) for a in noisy],
            "no BN": [plain_landscape(a) for a in plain],
            "no BN + noise": [result(0.3)] * 3,
        }))).verdict

    good = ([0.70, 0.71, 0.69], [0.69, 0.70, 0.68], [0.60, 0.61, 0.59])
    assert verdict(*good) == REPRODUCED
    assert verdict([0.70, 0.71, 0.69], [0.50, 0.52, 0.51], good[2]) == NOT_REPRODUCED  # noise costs 19 points
    assert verdict(good[0], [0.62, 0.66, 0.58], good[2]) == INCONCLUSIVE  # about 5 points below BN, within the noise
    assert verdict(*good, bn_landscape=rough, plain_landscape=smooth_bn) == NOT_REPRODUCED  # BN's landscape rougher
    # BN's raw beta 10 times lower, but its weights grew: in their units, as rough as no BN's (300)
    assert verdict(*good, bn_landscape=lambda a: smooth_bn(a, relative=[200.0, 300.0])) == NOT_REPRODUCED
    # no BN's figures only 1.2 times BN's: below the smallest effect of interest (1.25 times)
    slightly = lambda a: result(a, loss=(1.0, 1.12, 1.24), change=(0.6, 1.2), beta=(2.4, 3.6))  # noqa: E731
    assert verdict(*good, plain_landscape=slightly) == NOT_REPRODUCED
