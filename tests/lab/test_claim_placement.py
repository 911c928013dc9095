"""placement: each placement at its own learning rate, chosen on the validation split at each budget; the words of the findings."""

from dataclasses import replace

import pytest

from normlab.lab import stats
from normlab.lab.claims import CLAIMS, PROFILES, Run, placement
from normlab.lab.stats import NOT_REPRODUCED, REPRODUCED, decide

CLAIM = CLAIMS["placement"]
PROFILE = replace(PROFILES["tiny"], rounds=(3,))  # budgets of 10 and 20 steps


def result(val, test):
    """A run logged at steps 0, 10 and 20 with the given (short, long) validation and test accuracies."""
    return {
        "step": [0, 10, 20],
        "val_accuracy": [0.1, *val],
        "test_accuracy": [0.1, *test],
        "train_loss": [None, 1.0, 1.0],
        "final_val_accuracy": val[-1],
        "final_test_accuracy": test[-1],
        "diverged": None,
        "classes": 10,
        "val_samples": 1000,
        "test_samples": 1000,
        "probes": {},
    }


def judge(outcome):
    """The claim on its own configs, each given ``outcome(config) -> result``: figures and verdict."""
    runs = [Run(c, outcome(c)) for c in CLAIM.runs(PROFILE)]
    figures = CLAIM.summarize(runs)
    return figures, decide(CLAIM.parts(figures))


def test_the_runs_cover_both_networks_activations_placements_and_rates():
    configs = CLAIM.runs(PROFILE)
    cells = {(c.model.kind, c.model.activation, c.model.placement, c.lr) for c in configs}
    assert len(cells) == 2 * 2 * 2 * len(placement.RATES) and len(configs) == 3 * len(cells)
    assert {(c.steps, c.eval_every) for c in configs} == {(20, 10)}  # the short budget is the first log
    assert {c.optimizer for c in configs} == {"adam"}


def test_each_placement_is_judged_at_the_rate_its_validation_accuracy_prefers():
    # BN before is best on validation at 3e-4 (test 0.60) although its test accuracy is higher at 3e-3
    # (0.90): the verdict must see 0.60, never the test split's favourite. BN after is best at 1e-3.
    def outcome(c):
        jitter = 0.001 * c.seed
        if c.model.placement == "before":
            val, test = {3e-4: (0.7, 0.60), 1e-3: (0.5, 0.50), 3e-3: (0.4, 0.90)}[c.lr]
        else:
            val, test = {3e-4: (0.5, 0.50), 1e-3: (0.8, 0.70), 3e-3: (0.6, 0.95)}[c.lr]
        return result((val, val), (test + jitter, test + jitter))

    f, v = judge(outcome)
    name = "MLP, ReLU, 20 steps"
    assert f[f"tuned learning rate, {name}, BN before"] == 3e-4 and f[f"tuned learning rate, {name}, BN after"] == 1e-3
    assert f[f"test accuracy, {name}, BN before"]["values"] == pytest.approx([0.600, 0.601, 0.602])
    assert f[f"validation accuracy by learning rate, {name}, BN before"]["0.003"]["mean"] == pytest.approx(0.4)
    assert f["tuned at an end of the rates (the best may lie beyond)"] == 8  # every before arm at 3e-4
    assert v.verdict == REPRODUCED and len(v.parts) == 8
    assert set(placement.findings(v).values()) == {"after is better"}


def test_each_budget_is_its_own_part_and_tuned_at_that_budget():
    # sigmoid MLP: after is better at the short budget, before at the long one, the rates tuned per budget
    def outcome(c):
        jitter = 0.001 * c.seed
        if (c.model.kind, c.model.activation) != ("mlp", "sigmoid"):
            return result((0.5, 0.5), (0.7 + jitter, 0.7 + jitter) if c.model.placement == "after" else (0.6, 0.6))
        short_best, long_best = (1e-3, 3e-4)
        val = (0.8 if c.lr == short_best else 0.5, 0.8 if c.lr == long_best else 0.5)
        if c.model.placement == "after":
            test = (0.70 if c.lr == short_best else 0.1, 0.55 if c.lr == long_best else 0.1)
        else:
            test = (0.60 if c.lr == short_best else 0.1, 0.65 if c.lr == long_best else 0.1)
        return result(val, (test[0] + jitter, test[1] + jitter))

    f, v = judge(outcome)
    assert f["tuned learning rate, MLP, sigmoid, 10 steps, BN after"] == 1e-3
    assert f["tuned learning rate, MLP, sigmoid, 20 steps, BN after"] == 3e-4
    words = placement.findings(v)
    assert words["finding, MLP, sigmoid, 10 steps"] == "after is better"
    assert words["finding, MLP, sigmoid, 20 steps"] == "before is better"
    assert words["finding, CNN, sigmoid, 20 steps"] == "after is better"
    assert v.verdict == NOT_REPRODUCED


def test_a_run_that_diverged_counts_with_what_is_left_of_it():
    def outcome(c):
        r = result((0.5, 0.5), (0.7 + 0.001 * c.seed,) * 2 if c.model.placement == "after" else (0.6, 0.6))
        if c.model.placement == "before" and c.lr == 3e-3:  # diverged at step 5: no log at either budget
            r.update(step=[0], val_accuracy=[0.1], test_accuracy=[0.1], final_val_accuracy=0.9, final_test_accuracy=0.05,
                     diverged={"step": 5, "reason": "the training loss is nan"})
        return r

    f, _ = judge(outcome)
    assert f["tuned learning rate, CNN, ReLU, 10 steps, BN before"] == 3e-3  # what is left validates at 0.9
    assert f["test accuracy, CNN, ReLU, 10 steps, BN before"]["mean"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "after, before, words",
    [
        ([0.70, 0.71, 0.72], [0.60, 0.61, 0.62], "after is better"),
        ([0.60, 0.61, 0.62], [0.70, 0.71, 0.72], "before is better"),
        ([0.650, 0.652, 0.651], [0.651, 0.650, 0.652], "no meaningful difference"),
        ([0.600, 0.607, 0.614], [0.605, 0.612, 0.619], "after is not better"),  # before better by 0.5 pp +- 1.2
        ([0.60, 0.70, 0.65], [0.64, 0.66, 0.65], "unclear"),
    ],
)
def test_placement_finding_words(after, before, words):
    part = decide(stats.compare(after, before, what="d", smallest=placement.MEANINGFUL)).parts[0]
    assert placement.finding(part) == words, part.text()
