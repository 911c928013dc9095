"""scripts/pilots.py: the pilots behind two designs train the claims' own setups, on seeds no report
uses, and read the validation split only."""

import dataclasses
import importlib.util
import pathlib

import pytest

from normlab.lab.claims import CLAIMS, PROFILES
from normlab.lab.claims.base import Profile

spec = importlib.util.spec_from_file_location("pilots", pathlib.Path(__file__).resolve().parents[2] / "scripts" / "pilots.py")
pilots = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pilots)


def unseeded(configs):
    return {dataclasses.replace(c, seed=0) for c in configs}


@pytest.mark.parametrize("pilot, claim", [("init-depth", "init-robustness"), ("ghost-batch", "ghost-batches")])
def test_the_pilot_trains_the_claims_setup_on_seeds_no_report_uses(pilot, claim):
    runs = pilots.configs(pilot, 30)
    reported = {s for offset in (0, 1000) for p in PROFILES.values() for s in range(offset, offset + p.rounds[-1])}
    assert min(c.seed for c in runs) == 5000 and not {c.seed for c in runs} & reported
    # the design the pilot chose is among its runs, as the claim trains it (its rate grid, or the chosen small rate)
    chosen = CLAIMS[claim].runs(Profile("quick", (1,)))
    if claim == "ghost-batches":
        chosen = [c for c in chosen if c.batch_size > 16 and abs(c.lr - 0.01 * 32**0.5) < 1e-12]
    assert chosen and unseeded(chosen) <= unseeded(runs)


def test_the_pilot_reads_validation_only():
    result = {"final_val_accuracy": 0.4, "final_test_accuracy": 0.9, "diverged": None, "classes": 10}
    assert pilots.validation(result) == 0.4
    assert pilots.validation({**result, "diverged": {"step": 3}}) == 0.1  # at chance, as init-robustness counts it
    assert pilots.validation({**result, "diverged": {"step": 3}}, "ghost-batch") == 0.4  # as ghost-batches reads it


def test_gains_and_sensitivities():
    arms = {(3, "bn", "torch", 0.04, 256): [0.40, 0.42], (3, "ghost", "torch", 0.04, 256): [0.45, 0.47]}
    assert pilots.gains(arms) == "ghost BN's gain at batch 256: 0.0500 ± 0.0141"
    # two schemes at two rates: each at its best mean, then per seed (best - worst) / (best - chance)
    arms = {(6, "none", "torch", 0.1, 60): [0.30, 0.34], (6, "none", "torch", 0.3, 60): [0.20, 0.20]}
    arms.update({(6, "none", init, lr, 60): [0.5, 0.5] for init in ("lecun", "glorot", "he") for lr in (0.1, 0.3)})
    assert pilots.sensitivities(arms) == "sensitivity, 6 layers, none: 0.450 ± 0.071"  # 0.2 / 0.4 and 0.16 / 0.4
