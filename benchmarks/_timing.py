"""Timing helpers shared by the benchmark scripts: one training or inference step of a layer,
median times over interleaved rounds, ratios against a reference timed head to head, and
the geometric mean of ratios.

The scripts run as ``python benchmarks/<script>.py``, which puts this folder on the path.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

import normlab


def make_step(layer, x, dy, backend, train):
    """A callable that runs one step of ``layer`` on ``x`` under ``backend`` (None: automatic):
    forward + backward of ``dy`` when ``train``, else a forward under ``torch.no_grad()``."""

    def run():
        with normlab.use_backend(backend):
            if train:
                x.grad = None
                layer(x).backward(dy)
            else:
                with torch.no_grad():
                    layer(x)

    return run


def median_times(runs: dict, rounds: int, min_time: float) -> dict:
    """Median seconds per call of each runner, over interleaved rounds.

    Each runner's turn in a round starts with one untimed call: a runner that allocates
    large tensors hands memory back to the system, and the next one's first call pays the
    page faults to get it back, which would be charged to whoever comes next.
    """
    for run in runs.values():  # warm up
        run()
    # calls per round so that a round of the slowest runner lasts about min_time
    t0 = time.perf_counter()
    for run in runs.values():
        run()
    per_call = (time.perf_counter() - t0) / len(runs)
    reps = max(1, int(min_time / max(per_call, 1e-6)))
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            run()
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            samples[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(s) for name, s in samples.items()}


def against(reference, candidates: dict, rounds: int, min_time: float) -> tuple[float, dict]:
    """The reference's median seconds per call, and each candidate's time ratio to it.

    Each candidate is timed head to head with the reference alone (interleaved rounds of
    the two), not beside the other candidates: a slow candidate that churns through memory
    otherwise slows whichever runner follows it, and would skew the others' ratios.
    """
    ratios, reference_times = {}, []
    for name, run in candidates.items():
        times = median_times({"reference": reference, name: run}, rounds, min_time)
        ratios[name] = times[name] / times["reference"]
        reference_times.append(times["reference"])
    return statistics.median(reference_times), ratios


def geomean(xs):
    """The geometric mean of positive ratios; NaN for none."""
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
