"""shifted-data: the shifts, AdaBN undoing a change of gain and offset exactly where the answer is
known by hand, the measure in a run, and the verdict on constructed figures."""

import pytest
import torch

from normlab.lab import stats
from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.claims.shifted_data import SHIFTS, adapted, adapted_accuracy, shift
from normlab.lab.models import ModelSpec, build
from normlab.tools import precise_batchnorm
from normlab.lab.train import accuracy, train

CLAIM = CLAIMS["shifted-data"]


def test_shifts():
    x, g = torch.randn(50, 1, 8), torch.Generator().manual_seed(0)
    assert torch.equal(shift(x, "gain and offset", g), 2 * x + 1)
    noise = shift(x, "noise", g) - x
    assert 0.7 < float(noise.std()) < 1.3 and not torch.equal(noise, shift(x, "noise", g) - x)  # fresh draws
    with pytest.raises(ValueError, match="kind must be one of"):
        shift(x, "blur", g)


def test_re_estimated_statistics_undo_a_change_of_gain_and_offset(mnist1d):
    """The first layer is Linear -> BN: W (2x + 1) = 2 Wx + W1, a per-channel change of scale and mean that
    the first BN's statistics, re-estimated on the shifted data, take out again: the network outputs what it
    does on the clean data with statistics re-estimated there (up to eps / 4 in place of eps). With the
    statistics it has, the shift reaches every layer."""
    torch.manual_seed(0)
    model = build(ModelSpec("mlp", 2, 32, "relu", "bn"), mnist1d.sample_shape, 10)
    x = mnist1d.x_test
    precise_batchnorm(model, [mnist1d.x_train], progress=False)  # statistics of the clean training data
    model.eval()
    shifted = 2 * x + 1
    with torch.no_grad():
        on_clean, on_shifted = adapted(model, x, len(x))(x), adapted(model, shifted, len(x))(shifted)
        torch.testing.assert_close(on_shifted, on_clean, rtol=1e-4, atol=1e-4 * float(on_clean.abs().max()))
        assert (model(shifted) - model(x)).abs().max() > 0.1 * on_clean.abs().max()
    assert adapted_accuracy(model, shifted, shifted, mnist1d.y_test, len(x)) == accuracy(adapted(model, x, len(x)), x, mnist1d.y_test)


def test_the_measure_in_a_run(mnist1d):
    config = CLAIM.runs(Profile("tiny", (1,)))[0]
    value = train(config, mnist1d)["measures"]["shift_adaptation"]["value"][0]
    assert set(value) == {"clean", *SHIFTS, "test_samples"} and value["test_samples"] == 1000
    assert all(set(value[k]) == {"running", "adapted"} for k in ("clean", *SHIFTS))


def runs_with(clean, shifted, adapted, seeds=5, jitter=0.003):
    out = []
    for config in CLAIM.runs(Profile("tiny", (seeds,))):
        j = jitter * config.seed
        value = {"clean": {"running": clean + j, "adapted": clean + j}, "test_samples": 1000}
        for kind in SHIFTS:
            value[kind] = {"running": shifted[kind] + j, "adapted": adapted[kind] + j}
        out.append(Run(config, {"measures": {"shift_adaptation": {"step": [30], "value": [value]}}}))
    return out


def test_verdict():
    shifted, adapted = {"gain and offset": 0.3, "noise": 0.45}, {"gain and offset": 0.68, "noise": 0.55}
    f = CLAIM.summarize(runs_with(0.7, shifted, adapted))
    assert f["test accuracy, noise, re-estimated (AdaBN)"]["mean"] == pytest.approx(0.55 + 0.006)
    assert stats.decide(CLAIM.parts(f)).verdict == stats.REPRODUCED
    # re-estimating does not help with the noise: not reproduced
    assert stats.decide(CLAIM.parts(CLAIM.summarize(runs_with(0.7, shifted, {**adapted, "noise": 0.45})))).verdict == stats.NOT_REPRODUCED
    # a shift that costs nothing with the training statistics: not reproduced either
    assert stats.decide(CLAIM.parts(CLAIM.summarize(runs_with(0.7, {**shifted, "noise": 0.7}, adapted)))).verdict == stats.NOT_REPRODUCED
    # AdaBN's gain on the noise 1.5 points, with 1.6 points of noise per seed: inconclusive
    figures = CLAIM.summarize(runs_with(0.7, shifted, {**adapted, "noise": 0.465}, jitter=0.01))
    assert stats.decide(CLAIM.parts(figures)).verdict == stats.INCONCLUSIVE
