"""Claims: the verdict rule on synthetic numbers, each claim's verdict on clear cases, and each claim run on the tiny profile."""

import json
import math

import pytest

from normlab.lab.claims import CLAIMS, PROFILES, Run
from normlab.lab.claims import base
from normlab.lab.claims.base import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from normlab.lab.models import ModelSpec
from normlab.lab.reproduce import reproduce
from normlab.lab.train import RunConfig


def test_stat():
    s = base.stat([1, 2, 3, 6])
    assert s["mean"] == 3 and s["std"] == pytest.approx(math.sqrt(14 / 3)) and s["n"] == 4
    assert base.stat([5])["std"] == 0


@pytest.mark.parametrize(
    "claimed, against, min_effect, expected",
    [
        ([10, 11, 12], [1, 2, 3], 0, REPRODUCED),  # effect 9, 2se = 1.63
        ([1, 2, 3], [10, 11, 12], 0, NOT_REPRODUCED),  # the opposite effect
        ([5, 1, 9], [4, 2, 7], 0, INCONCLUSIVE),  # effect 0.67, 2se = 5.2: within the noise
        ([3, 3, 3], [3, 3, 3], 0, NOT_REPRODUCED),  # exactly no effect, no noise
        ([10, 11, 12], [1, 2, 3], 20, NOT_REPRODUCED),  # an effect, but far below the one claimed
        ([10, 11, 12], [1, 2, 3], 8.5, INCONCLUSIVE),  # 9 +- 1.63 straddles 8.5
        ([2.0, 2.1, 2.2], 1.0, 0, REPRODUCED),  # against a fixed threshold
        ([0.9, 1.0, 1.1], 1.0, 0, INCONCLUSIVE),
        ([10], [1], 0, INCONCLUSIVE),  # one seed measures no noise
    ],
)
def test_compare(claimed, against, min_effect, expected):
    v = base.compare(claimed, against, min_effect=min_effect, what="effect")
    assert v.verdict == expected, v.explanation
    assert v.explanation.startswith("effect: ")
    # a figure of base.stat stands for its per-seed values
    as_figures = [base.stat(s) if isinstance(s, list) else s for s in (claimed, against)]
    assert base.compare(*as_figures, min_effect=min_effect, what="effect") == v


def test_combine():
    r, n, i = (base.Verdict(k, k) for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    assert base.combine(r, r).verdict == REPRODUCED
    assert base.combine(r, i).verdict == INCONCLUSIVE
    assert base.combine(i, n).verdict == NOT_REPRODUCED
    assert "[reproduced]" in base.combine(r, i).explanation


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
    assert claim.verdict(f).verdict == REPRODUCED
    swapped = fake_runs(spec, {"bn": [r.result for r in runs[3:]], "none": [r.result for r in runs[:3]]})
    assert claim.verdict(claim.summarize(swapped)).verdict == NOT_REPRODUCED


def test_stable_distributions_drift():
    claim = CLAIMS["stable-distributions"]
    spec = lambda norm, seed: RunConfig(ModelSpec("mlp", 3, 100, "sigmoid", norm), seed=seed)  # noqa: E731

    def run(shift):  # the percentiles move by `shift` between the two logs
        p = [[[-1, 0, 1]] * 10, [[-1 + shift, shift, 1 + shift]] * 10]
        return history([0.1, 0.2], probes={"last_activation_input": p})

    f = claim.summarize(fake_runs(spec, {"bn": [run(0.1), run(0.2), run(0.15)], "none": [run(2), run(3), run(2.5)]}))
    assert f["drift of the percentiles, BN"]["values"] == pytest.approx([0.1, 0.2, 0.15])
    assert claim.verdict(f).verdict == REPRODUCED
    f = claim.summarize(fake_runs(spec, {"bn": [run(1), run(3), run(2)], "none": [run(2), run(1), run(3)]}))
    assert claim.verdict(f).verdict == INCONCLUSIVE  # the same mean drift, with noise
    f = claim.summarize(fake_runs(spec, {"bn": [run(2), run(3), run(2.5)], "none": [run(0.1), run(0.2), run(0.15)]}))
    assert claim.verdict(f).verdict == NOT_REPRODUCED


def test_higher_learning_rates_verdict():
    claim = CLAIMS["higher-learning-rates"]
    from normlab.lab.claims.higher_learning_rates import RATES

    def make(key, seed):
        norm, lr = key
        return RunConfig(ModelSpec("mlp", 3, 100, "sigmoid", norm), lr=lr, steps=400, seed=seed)

    def result(norm, lr):
        if norm == "none":  # trains up to 3, slowly
            return history([0.1, 0.2, 0.3, 0.4, 0.5] if lr <= 3 else [0.1] * 5)
        return history([0.1, 0.5, 0.6, 0.6, 0.6] if lr <= 30 else [0.1] * 5)

    runs = [Run(make((n, lr), s), result(n, lr)) for n in ("none", "bn") for lr in RATES for s in range(3)]
    f = claim.summarize(runs)
    assert f["largest learning rate that trains (log10), BN"]["values"] == [pytest.approx(math.log10(30))] * 3
    assert f["largest learning rate that trains (log10), no BN"]["values"] == [pytest.approx(math.log10(3))] * 3
    assert f["steps to target, BN above the no-BN network's largest rate"]["values"] == [100] * 3
    assert f["steps to target, no BN at its fastest rate"]["values"] == [400] * 3
    assert claim.verdict(f).verdict == REPRODUCED
    same = [Run(r.config, result("none", r.config.lr)) for r in runs]
    assert claim.verdict(claim.summarize(same)).verdict == NOT_REPRODUCED


def test_saturating_activations_verdict():
    claim = CLAIMS["saturating-activations"]
    chance = math.log(10)

    def figures(sigmoid_plain, sigmoid_bn):
        f = {"chance-level loss ln(classes)": chance}
        f["final training loss, sigmoid, no BN"] = base.stat(sigmoid_plain)
        f["final training loss, sigmoid, BN"] = base.stat(sigmoid_bn)
        return f

    assert claim.verdict(figures([2.30, 2.31, 2.30], [0.5, 0.6, 0.4])).verdict == REPRODUCED
    assert claim.verdict(figures([1.0, 1.1, 0.9], [0.5, 0.6, 0.4])).verdict == NOT_REPRODUCED  # plain trains too
    assert claim.verdict(figures([2.30, 2.31, 2.30], [2.2, 2.25, 2.3])).verdict == NOT_REPRODUCED  # BN stuck too
    assert claim.verdict(figures([2.30, 2.31, 2.30], [0.5, 2.2, 1.9])).verdict == INCONCLUSIVE


def test_every_claim_declares_itself():
    for name, c in CLAIMS.items():
        assert name == c.name and all(len(getattr(c, f)) > 10 for f in ("source", "statement", "measured", "criterion"))
        for profile in PROFILES.values():
            runs = c.runs(profile)
            assert len({r.key() for r in runs}) == len(runs), f"{name} asks for the same run twice"
            assert {r.seed for r in runs} == set(range(profile.seeds))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "saturating-activations" else n for n in CLAIMS])
def test_each_claim_on_the_tiny_profile(name, tmp_path):
    doc = reproduce([name], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    (entry,) = doc["claims"]
    assert entry["name"] == name and entry["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
    stats = [v for v in entry["figures"].values() if isinstance(v, dict) and "mean" in v]
    assert stats and all(s["n"] == 2 and len(s["values"]) == 2 for s in stats)
    assert set(entry["runs"]) <= set(doc["runs"]) and json.loads((tmp_path / "results.json").read_text()) == doc
    assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
