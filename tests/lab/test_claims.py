"""Claims: the verdict rule on synthetic numbers, each claim's verdict on clear cases, and each claim run on the tiny profile."""

import json
import math

import pytest

from normlab.lab.claims import CLAIMS, PROFILES, Run
from normlab.lab import stats
from normlab.lab.claims import base
from normlab.lab.stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, decide
from normlab.lab.models import ModelSpec
from normlab.lab.reproduce import reproduce
from normlab.lab.train import RunConfig


def verdict_of(claim, figures):
    """The claim's verdict on ``figures`` at one look."""
    return decide(claim.parts(figures))


def test_stat():
    s = stats.stat([1, 2, 3, 6], resolution=0.5)
    assert s["mean"] == 3 and s["std"] == pytest.approx(math.sqrt(14 / 3)) and s["n"] == 4 and s["resolution"] == 0.5
    assert stats.stat([5])["std"] == 0


def test_profiles_add_seeds_in_rounds():
    quick = PROFILES["quick"]
    assert quick.looks >= 2 and quick.rounds[0] >= 10 and PROFILES["full"].rounds[0] >= 20
    assert list(quick.seeds) == list(range(quick.rounds[0]))
    later = base.Profile("quick", (10, 20), seed_offset=1000).at(2)
    assert later.seeds == range(1000, 1020)
    with pytest.raises(ValueError, match="increasing seed counts"):
        base.Profile("quick", (10, 10))


def history(accuracies, every=100, **extra):
    return {
        "step": [i * every for i in range(len(accuracies))],
        "test_accuracy": accuracies,
        "train_loss": [None] + [1.0] * (len(accuracies) - 1),
        "final_test_accuracy": accuracies[-1],
        "diverged": None,
        "classes": 10,
        "probes": {},
        **extra,
    }


def fake_runs(make_config, results):
    return [Run(make_config(key, seed), r) for key, rs in results.items() for seed, r in enumerate(rs)]


def test_faster_training_counts_steps_and_censors_at_the_budget():
    claim = CLAIMS["faster-training"]
    spec = lambda norm, seed: RunConfig(ModelSpec("mlp", 3, 100, "sigmoid", norm), steps=400, seed=seed)  # noqa: E731
    runs = fake_runs(spec, {
        "bn": [history([0.1, 0.5, 0.6, 0.6, 0.6]), history([0.1, 0.3, 0.6, 0.6, 0.6]), history([0.1, 0.6, 0.6, 0.6, 0.6])],
        "none": [history([0.1, 0.2, 0.3, 0.4, 0.5]), history([0.1, 0.2, 0.3, 0.5, 0.5]), history([0.1, 0.1, 0.2, 0.3, 0.4])],
    })
    f = claim.summarize(runs)
    assert f["target test accuracy"] == pytest.approx(0.95 * (0.5 + 0.5 + 0.4) / 3)
    assert f["steps to target, BN"]["values"] == [100, 200, 100]
    assert f["steps to target, no BN"]["values"] == [400, 300, 400]  # the third never gets there: the budget
    assert f["runs never reaching the target (BN, no BN)"] == [0, 1]
    assert verdict_of(claim, f).verdict == REPRODUCED
    swapped = fake_runs(spec, {"bn": [r.result for r in runs[3:]], "none": [r.result for r in runs[:3]]})
    assert verdict_of(claim, claim.summarize(swapped)).verdict == NOT_REPRODUCED


def test_stable_distributions_drift():
    claim = CLAIMS["stable-distributions"]
    spec = lambda norm, seed: RunConfig(ModelSpec("mlp", 3, 100, "sigmoid", norm), seed=seed)  # noqa: E731

    def run(shift):  # the percentiles move by `shift` between the two logs
        p = [[[-1, 0, 1]] * 10, [[-1 + shift, shift, 1 + shift]] * 10]
        return history([0.1, 0.2], probes={"last_activation_input": p})

    f = claim.summarize(fake_runs(spec, {"bn": [run(0.1), run(0.2), run(0.15)], "none": [run(2), run(3), run(2.5)]}))
    assert f["drift of the percentiles, BN"]["values"] == pytest.approx([0.1, 0.2, 0.15])
    assert verdict_of(claim, f).verdict == REPRODUCED
    f = claim.summarize(fake_runs(spec, {"bn": [run(1), run(3), run(2)], "none": [run(2), run(1), run(3)]}))
    assert verdict_of(claim, f).verdict == INCONCLUSIVE  # the same mean drift, with noise
    f = claim.summarize(fake_runs(spec, {"bn": [run(2), run(3), run(2.5)], "none": [run(0.1), run(0.2), run(0.15)]}))
    assert verdict_of(claim, f).verdict == NOT_REPRODUCED


def test_saturating_activations_verdict():
    claim = CLAIMS["saturating-activations"]
    chance = math.log(10)

    def figures(sigmoid_plain, sigmoid_bn):
        f = {"chance-level loss ln(classes)": chance}
        f["final training loss, sigmoid, no BN"] = stats.stat(sigmoid_plain)
        f["final training loss, sigmoid, BN"] = stats.stat(sigmoid_bn)
        return f

    assert verdict_of(claim, figures([2.30, 2.31, 2.30], [0.5, 0.6, 0.4])).verdict == REPRODUCED
    assert verdict_of(claim, figures([1.0, 1.1, 0.9], [0.5, 0.6, 0.4])).verdict == NOT_REPRODUCED  # plain trains too
    assert verdict_of(claim, figures([2.30, 2.31, 2.30], [2.2, 2.25, 2.3])).verdict == NOT_REPRODUCED  # BN stuck too
    assert verdict_of(claim, figures([2.30, 2.31, 2.30], [0.5, 2.2, 1.9])).verdict == INCONCLUSIVE


def test_every_claim_declares_itself():
    for name, c in CLAIMS.items():
        assert name == c.name and all(len(getattr(c, f)) > 10 for f in ("source", "statement", "measured", "criterion"))
        for profile in (PROFILES[p] for p in ("tiny", "quick", "full")):
            runs = c.runs(profile)
            assert len({r.key() for r in runs}) == len(runs), f"{name} asks for the same run twice"
            assert {r.seed for r in runs} == set(profile.seeds)


SLOW_ON_TINY = ("saturating-activations", "placement")  # CNNs; placement trains 48 configurations


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ON_TINY else n for n in CLAIMS])
def test_each_claim_on_the_tiny_profile(name, tmp_path):
    doc = reproduce([name], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    (entry,) = doc["claims"]
    assert entry["name"] == name and entry["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    stats = {k: v for k, v in entry["figures"].items() if isinstance(v, dict) and "mean" in v}
    # every figure is over the 2 seeds, but one over the seeds a claim judges on after tuning on the others
    assert stats and all(s["n"] == len(s["values"]) == (1 if "(judged seeds)" in k else 2) for k, s in stats.items())
    assert set(entry["runs"]) <= set(doc["runs"]) and json.loads((tmp_path / "results.json").read_text()) == doc
    assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "name", ["noisy-bn", "placement", "higher-learning-rates", "ghost-batches", "inference-statistics", "init-robustness"]
)
def test_redesigned_claims_run_on_the_shipped_digits(name):
    """The held-out check of a redesign: its networks fit the 8x8 digits (the CNN in 2-D), every profile that runs claims."""
    from dataclasses import replace

    from normlab.lab import data

    digits = data.load("digits")
    for profile in (PROFILES[p] for p in ("tiny", "quick", "full")):
        runs = CLAIMS[name].runs(replace(profile, data="digits"))
        assert {c.data for c in runs} == {"digits"} and all(c.misfit(digits) is None for c in runs)


def test_recurrent_is_skipped_on_images_with_its_reason():
    """Its GRU reads sequences (C, L); the digits are 8x8 images: reproduce skips it and says why."""
    from dataclasses import replace

    from normlab.lab.reproduce import plan

    planned, skipped = plan([CLAIMS["recurrent"]], replace(PROFILES["tiny"], data="digits"))
    assert not planned and "an rnn reads samples of shape (C, L) as L steps of C values, got (1, 8, 8)" in skipped["recurrent"]
