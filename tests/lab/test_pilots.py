"""scripts/pilots.py: the pilots behind two designs train the claims' own setups, on seeds no report
uses, and read the validation split only."""

import dataclasses
import importlib.util
import pathlib

import pytest

from normlab.lab.claims import CLAIMS, PROFILES, base
from normlab.lab.claims.base import Profile
from normlab.lab.models import ModelSpec
from normlab.lab.train import RunConfig

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
    diverged = pilots.Run(None, {**result, "diverged": {"step": 3}})
    assert pilots.validation(pilots.Run(None, result)) == 0.4
    assert pilots.validation(diverged) == 0.1  # at chance, as init-robustness counts it
    assert pilots.validation(diverged, "ghost-batch") == 0.4  # as ghost-batches reads it


def run(depth, norm, init, lr, batch, seed, accuracy, diverged=None):
    config = RunConfig(ModelSpec("mlp", depth=depth, norm=norm, init=init), lr=lr, batch_size=batch, seed=seed)
    return pilots.Run(config, {"final_val_accuracy": accuracy, "final_test_accuracy": 1.0, "diverged": diverged, "classes": 10})


def arms_of(*runs):
    out = {}
    for r in runs:
        c = r.config
        out.setdefault((c.model.depth, c.model.norm, c.model.init, c.lr, c.batch_size), []).append(r)
    return out


def test_gains_and_sensitivities():
    arms = arms_of(*(run(3, norm, "torch", 0.04, 256, s, acc) for norm, accs in (("ghost", (0.45, 0.47)), ("bn", (0.40, 0.42)))
                     for s, acc in enumerate(accs)))
    assert pilots.gains(arms) == "ghost BN's gain at batch 256: 0.0500 ± 0.0141"
    # two schemes at two rates: each at the rate the claim chooses, then per seed (best - worst) / (best - chance)
    runs = [run(6, "none", "torch", 0.1, 60, 0, 0.30), run(6, "none", "torch", 0.1, 60, 1, 0.34),
            run(6, "none", "torch", 0.3, 60, 0, 0.20), run(6, "none", "torch", 0.3, 60, 1, 0.20)]
    runs += [run(6, "none", init, lr, 60, s, 0.5) for init in ("lecun", "glorot", "he") for lr in (0.1, 0.3) for s in (0, 1)]
    assert pilots.sensitivities(arms_of(*runs)) == "sensitivity, 6 layers, none: 0.450 ± 0.071"  # 0.2 / 0.4 and 0.16 / 0.4


def test_the_rate_is_chosen_as_the_claim_chooses_it():
    """base.tune reads a diverged run's remains, as init-robustness's own choice does; the sensitivity then
    counts the chosen runs' diverged ones at chance. The pilot does both the claim's way."""
    runs = [run(6, "none", "torch", 1.0, 60, s, 0.6, diverged={"step": 900}) for s in (0, 1)]
    runs += [run(6, "none", "torch", 0.3, 60, s, 0.5) for s in (0, 1)]
    runs += [run(6, "none", init, 0.3, 60, s, 0.5) for init in ("lecun", "glorot", "he") for s in (0, 1)]
    # the diverged rate 1 has the better remains (0.6), so it is chosen, and then counts at chance: sensitivity 1
    assert base.tune([r for r in runs if r.config.model.init == "torch"])[0] == 1.0
    assert pilots.sensitivities(arms_of(*runs)) == "sensitivity, 6 layers, none: 1.000 ± 0.000"
