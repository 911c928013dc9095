"""Timing helpers shared by the benchmark scripts: one training or inference step of a layer,
median times over interleaved rounds, and the geometric mean of ratios.

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
    """Median seconds per call of each runner, over interleaved rounds."""
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
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            samples[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(s) for name, s in samples.items()}


def geomean(xs):
    """The geometric mean of positive ratios; NaN for none."""
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
