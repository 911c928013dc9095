"""inference-overhead: interleaved timing and its ratio on a clock whose answer is known, the
measure on a small model (what it records, never how fast), and the verdict on constructed figures."""

import pytest
from test_measures import a_step

from normlab.lab import stats
from normlab.lab.claims import CLAIMS, Run
from normlab.lab.claims.base import Profile
from normlab.lab.claims.inference_overhead import BATCHES, ROUNDS, inference_latency, median_ratio, time_interleaved
from normlab.lab.models import ModelSpec

CLAIM = CLAIMS["inference-overhead"]


class FakeClock:
    """A clock that only the timed functions move: each call of a function advances it by that function's cost."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now

    def costing(self, name, seconds):
        def fn():
            self.calls.append(name)
            self.now += seconds

        return fn


def test_time_interleaved_rotates_the_order_and_times_each_call():
    clock = FakeClock()
    fns = {"BN": clock.costing("BN", 3.0), "folded": clock.costing("folded", 2.0), "no BN": clock.costing("no BN", 2.0)}
    times = time_interleaved(fns, rounds=3, calls=2, clock=clock)
    assert times == {"BN": [3.0] * 3, "folded": [2.0] * 3, "no BN": [2.0] * 3}  # seconds per call
    order = clock.calls[::2]  # each function is called twice in a row
    assert order == ["BN", "folded", "no BN", "folded", "no BN", "BN", "no BN", "BN", "folded"]
    assert median_ratio(times, "BN", "no BN") == 1.5


def test_median_ratio_is_robust_to_one_slow_round():
    times = {"BN": [1.1, 1.1, 9.0, 1.1], "no BN": [1.0, 1.0, 1.0, 1.0]}  # round 2: the machine was busy during BN's turn
    assert median_ratio(times, "BN", "no BN") == pytest.approx(1.1)


def test_the_measure_times_three_equivalent_networks():
    step = a_step(ModelSpec("cnn", 2, 4, "relu", "bn", final_width=4))
    step.model.eval()
    value = inference_latency(step)
    assert value["fold error"] < 1e-5  # the folded network computes what the BN network does
    for b in BATCHES:
        timed = value[f"batch {b}"]
        assert timed["calls"] >= 1 and set(timed["seconds"]) == {"BN", "folded", "no BN"}
        assert all(len(t) == ROUNDS and min(t) > 0 for t in timed["seconds"].values())


def runs_with(ratios_by_batch):
    """Runs whose rounds all give the ratio ``ratios_by_batch[b][seed]`` of BN to no BN (folded: 1)."""
    out = []
    for config in CLAIM.runs(Profile("tiny", (len(ratios_by_batch[1]),))):
        value = {"fold error": 1e-7}
        for b in BATCHES:
            r = ratios_by_batch[b][config.seed]
            value[f"batch {b}"] = {"calls": 10, "seconds": {"BN": [r * 1e-4] * ROUNDS, "folded": [1e-4] * ROUNDS, "no BN": [1e-4] * ROUNDS}}
        out.append(Run(config, {"measures": {"inference_latency": {"step": [10], "value": [value]}}}))
    return out


def test_figures_and_verdict():
    small = [1.01, 1.02, 1.015, 1.01, 1.02]
    f = CLAIM.summarize(runs_with({1: small, 256: small}))
    assert f["batch 1: time ratio BN / no BN"]["values"] == pytest.approx(small)
    assert f["batch 256: time ratio folded / no BN"]["values"] == pytest.approx([1.0] * 5)
    assert f["batch 1: microseconds per forward, no BN"]["mean"] == pytest.approx(100)
    assert stats.decide(CLAIM.parts(f)).verdict == stats.REPRODUCED
    large = [1.4, 1.5, 1.45, 1.42, 1.48]  # at one sample, BN's calls cost 40-50% of a small network's time
    assert stats.decide(CLAIM.parts(CLAIM.summarize(runs_with({1: large, 256: small})))).verdict == stats.NOT_REPRODUCED
    noisy = [0.95, 1.2, 1.0, 1.15, 1.05]
    assert stats.decide(CLAIM.parts(CLAIM.summarize(runs_with({1: noisy, 256: small})))).verdict == stats.INCONCLUSIVE
