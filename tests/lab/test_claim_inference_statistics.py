"""inference-statistics: the measure on a case known by hand, the figures from synthetic runs, and the verdicts."""

import pytest
import torch
from test_claims import verdict_of
from torch import nn

import normlab
from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.claims.inference_statistics import MOMENTA
from normlab.lab.data import Dataset
from normlab.lab.measures import MEASURES, TrainingStep
from normlab.lab.models import ModelSpec
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from normlab.lab.train import RunConfig

CLAIM = CLAIMS["inference-statistics"]


def test_the_measure_on_a_case_known_by_hand():
    """One value per sample, BN on it, class 1 exactly when the normalized value is positive.

    The training values are 10 and 12 (mean 11): precise statistics put the boundary at 11 and
    classify the test values 10.5 and 11.5 right. The initial running statistics (mean 0,
    variance 1) call both class 1 (half right); a test batch of one normalizes each to 0, so BN
    outputs its shift (0) and both logits are 0: class 0 for both (half right); the whole test
    batch (mean 11) classifies both right.
    """
    x = torch.tensor([10.0, 12.0] * 8).view(16, 1, 1)
    y = (x.view(-1) > 11).long()
    x_test, y_test = torch.tensor([10.5, 11.5]).view(2, 1, 1), torch.tensor([0, 1])
    ds = Dataset("by hand", x, y, x_test, y_test, 2, x_val=x_test, y_val=y_test)
    bn = normlab.nn.BatchNorm1d(1)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))  # logits (-z, z)
    model = nn.Sequential(nn.Flatten(), bn, head)
    config = RunConfig(ModelSpec("mlp", 1, 1, "relu", "bn"), batch_size=4, measures=("inference_statistics",))
    out = MEASURES["inference_statistics"].fn(TrainingStep(0, model, None, x[:4], y[:4], config, ds))
    assert out == {"running": 0.5, "batch 1": 0.5, "batch 8": 1.0, "batch all": 1.0, "precise": 1.0}
    # precise statistics: the training set's mean and unbiased variance, exactly
    assert float(bn.running_mean) == pytest.approx(11.0) and float(bn.running_var) == pytest.approx(16 / 15)


def test_the_cumulative_average_is_the_mean_of_the_batch_statistics():
    """momentum None (the blog post's "averages of all batch means and variances calculated during training")."""
    from normlab.lab.models import build

    model = build(ModelSpec("mlp", 1, 3, "relu", "bn", norm_momentum=None), (1, 4), 2)
    linear, bn = model[1], model[2]
    batches = [torch.randn(5, 1, 4, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
        pre = [linear(b.flatten(1)) for b in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack([p.mean(0) for p in pre]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([p.var(0) for p in pre]).mean(0))


def runs(running, precise):
    """Runs of every momentum: ``running[momentum][seed]``, precise ``precise[seed]`` (the same weights in every momentum)."""
    out = []
    for config in CLAIM.runs(Profile("tiny", (len(precise),))):
        s, m = config.seed, config.model.norm_momentum
        value = {"running": running[m][s], "precise": precise[s], "batch 1": 0.1, "batch 8": 0.5, "batch all": 0.69}
        history = {
            "step": [0, 20], "test_accuracy": [0.1, running[m][s]], "train_loss": [None, 1.0], "final_test_accuracy": running[m][s],
            "diverged": None, "classes": 10, "test_samples": 1000, "probes": {},
            "measures": {"inference_statistics": {"step": [20], "value": [value]}},
        }
        out.append(Run(config, history))
    return out


PRECISE = [0.700, 0.690, 0.712, 0.705]


def same_as_precise(shift=0.0, changes=None):
    """Every momentum at precise + ``shift``, but those in ``changes`` (momentum -> per seed)."""
    return {**{m: [p + shift for p in PRECISE] for m in MOMENTA}, **(changes or {})}


def test_figures():
    running = same_as_precise(changes={0.1: [0.698, 0.691, 0.708, 0.703], None: [0.55, 0.52, 0.56, 0.54]})
    f = CLAIM.summarize(runs(running, PRECISE))
    assert f["chance"] == 0.1
    assert f["test accuracy, cumulative average"]["values"] == [0.55, 0.52, 0.56, 0.54]
    assert f["test accuracy, precise statistics (training set)"]["mean"] == pytest.approx(0.70175)
    assert f["running average, momentum 0.1 - precise statistics, per seed"]["values"] == pytest.approx([-0.002, 0.001, -0.004, -0.002])
    assert f["cumulative average - running average, momentum 0.1, per seed"]["mean"] == pytest.approx(0.5425 - 0.7)
    assert f["test accuracy, batch statistics, batch of 1"]["mean"] == pytest.approx(0.1)
    assert f["the same weights in every momentum's run"] is True
    other = runs(running, PRECISE)
    other[0].result["measures"]["inference_statistics"]["value"][0]["precise"] = 0.3
    assert CLAIM.summarize(other)["the same weights in every momentum's run"] is False


def test_verdicts():
    judge = lambda running: verdict_of(CLAIM, CLAIM.summarize(runs(running, PRECISE)))  # noqa: E731
    # the running and cumulative averages within a fraction of a point of precise statistics: both equivalent
    v = judge(same_as_precise(changes={0.1: [0.698, 0.691, 0.708, 0.703], None: [0.699, 0.692, 0.709, 0.702]}))
    assert v.verdict == REPRODUCED, v.explanation
    # the cumulative average far behind (it averages the statistics of early training): part 2 fails
    v = judge(same_as_precise(changes={None: [0.55, 0.52, 0.56, 0.54]}))
    assert v.verdict == NOT_REPRODUCED and [p.verdict for p in v.parts] == [REPRODUCED, NOT_REPRODUCED]
    # the running averages two points behind precise statistics, every seed: part 1 fails
    assert judge(same_as_precise(-0.02)).parts[0].verdict == NOT_REPRODUCED
    # within the margin on average, but too noisy to tell
    assert judge(same_as_precise(changes={0.1: [0.69, 0.70, 0.68, 0.71]})).parts[0].verdict == INCONCLUSIVE
