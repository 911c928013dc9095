"""``normlab reproduce``: run what the claims need, judge them, write results.json and the report.

1. Every claim lists its runs; runs two claims share are trained once. A claim with a
   run that cannot train on the data (:meth:`RunConfig.misfit`: an rnn on images, more
   poolings than the images have pixels, more samples than the data has) is skipped,
   with the reason on stderr and in the report, before anything is trained.
2. Each run's result is cached in ``OUT/runs/<key>.json`` (key: a hash of its whole
   config, :meth:`RunConfig.key`), written atomically as soon as the run ends. Runs
   already there are not trained again, so an interrupted ``reproduce`` resumes where
   it stopped, and a second one only rebuilds the report.
3. Missing runs are trained in ``jobs`` worker processes (one thread each), longest
   first, with a progress bar and ETA on stderr.
4. Each claim summarizes its runs into figures and a verdict, all stored with every
   run, the profile and the library versions in ``OUT/results.json``; the report is
   then written from that file alone (:mod:`normlab.lab.report`).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import functools
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import time
from importlib import metadata

from .._atomic import atomic_write
from .._progress import Progress
from . import data as datasets
from .claims import CLAIMS, Claim, Profile, Run
from .claims.base import SKIPPED
from .models import build, macs, torch_calls
from .train import RESULT_VERSION, RunConfig, train

__all__ = ["reproduce", "run_all", "plan", "judge", "default_jobs"]


def default_jobs() -> int:
    """Worker processes: one per core, at most 8 (the runs are single-threaded)."""
    return max(1, min(os.cpu_count() or 1, 8))


def _run_path(out: pathlib.Path, config: RunConfig) -> pathlib.Path:
    return out / "runs" / f"{config.key()}.json"


def load_run(out: pathlib.Path, config: RunConfig) -> dict | None:
    """The cached result of ``config`` under ``out``, or None (a damaged file counts as missing)."""
    try:
        stored = json.loads(_run_path(out, config).read_text())
    except (OSError, ValueError):
        return None
    return stored["result"] if stored.get("config") == config.to_dict() else None


@functools.lru_cache(maxsize=2)
def _dataset(name: str) -> datasets.Dataset:
    return datasets.load(name)


def _train_and_store(config: RunConfig, out: pathlib.Path) -> dict:
    """Train one run and cache its result (in a worker process or in this one)."""
    result = train(config, _dataset(config.data))
    text = json.dumps({"config": config.to_dict(), "result": result})
    atomic_write(_run_path(out, config), text.encode())
    return result


SECONDS_PER_MAC = 7.4e-11
SECONDS_PER_CALL = 1.4e-5


def _cost(config: RunConfig) -> float:
    """A run's expected training time, in seconds on one core of the machine that ran the
    full profile: per step, the multiply-adds of forward and backward (3x the forward's)
    and the per-call overhead of the torch calls in a forward. The two rates are fitted
    to the full profile's 395 runs, trained two at a time on 2 cores (docs/claims.md,
    Cost): nine in ten came within 0.68x to 1.59x of it."""
    ds = _dataset(config.data)
    per_sample, calls = _work(config.model, ds.sample_shape, ds.classes)
    return config.steps * (SECONDS_PER_MAC * 3 * config.batch_size * per_sample + SECONDS_PER_CALL * calls)


@functools.lru_cache(maxsize=None)
def _work(spec, sample_shape, classes) -> tuple[int, int]:
    """Multiply-adds of one sample's forward pass, and torch calls of a forward pass."""
    model = build(spec, sample_shape, classes)
    return macs(model, sample_shape), torch_calls(model, sample_shape)


def run_all(configs: list[RunConfig], out: pathlib.Path, jobs: int = 1, progress: bool = True) -> dict[str, dict]:
    """Results of every config by key, training those not cached under ``out``."""
    unique = {c.key(): c for c in configs}
    results = {k: r for k, c in unique.items() if (r := load_run(out, c)) is not None}
    todo = sorted((c for k, c in unique.items() if k not in results), key=_cost, reverse=True)
    if not todo:
        return results
    costs = {c.key(): _cost(c) for c in todo}
    bar = Progress(len(todo), work=sum(costs.values()), unit="runs") if progress else None
    if progress:
        bar.stream.write(f"{len(todo)} runs to train ({len(results)} already done), {min(jobs, len(todo))} at a time\n")
        bar.show()
    if jobs <= 1:
        for c in todo:
            results[c.key()] = _train_and_store(c, out)
            if bar:
                bar.advance(costs[c.key()])
        return results
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
    pool = cf.ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context)
    try:
        futures = {pool.submit(_train_and_store, c, out): c for c in todo}
        for f in cf.as_completed(futures):
            c = futures[f]
            results[c.key()] = f.result()
            if bar:
                bar.advance(costs[c.key()])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def plan(claims: list[Claim], profile: Profile, dataset: datasets.Dataset) -> tuple[dict, dict]:
    """``({claim: its runs}, {claim: why it is skipped})``: a claim is skipped when one of
    its runs cannot train on ``dataset`` (the first such run's reason)."""
    planned, skipped = {}, {}
    for claim in claims:
        runs = claim.runs(profile)
        reason = next((r for r in (c.misfit(dataset) for c in runs) if r), None)
        if reason:
            skipped[claim.name] = reason
        else:
            planned[claim.name] = runs
    return planned, skipped


def skip(claim: Claim, reason: str) -> dict:
    """A skipped claim's entry in results.json: what it declares, and why it was not run."""
    explanation = f"its networks cannot train on this data: {reason}"
    return {**_declared(claim), "runs": [], "figures": {}, "verdict": SKIPPED, "explanation": explanation}


def _declared(claim: Claim) -> dict:
    return {k: getattr(claim, k) for k in ("name", "source", "statement", "measured", "criterion")}


def judge(claim: Claim, runs: list[Run]) -> dict:
    """A claim's entry in results.json: what it declares, its figures and its verdict."""
    figures = claim.summarize(runs)
    v = claim.verdict(figures)
    return {
        **_declared(claim),
        "runs": [r.config.key() for r in runs],
        "figures": figures,
        "verdict": v.verdict,
        "explanation": v.explanation,
    }


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("normlab", "torch", "numpy", "mnist1d", "matplotlib"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def reproduce(
    names: list[str] | None = None,
    profile: Profile | None = None,
    out: str | os.PathLike = "normlab-report",
    jobs: int | None = None,
    progress: bool = True,
) -> dict:
    """Test the claims ``names`` (default: all) under ``profile``; write ``out``/results.json and the report."""
    from . import report

    profile = profile or Profile("quick", 3)
    claims = [CLAIMS[n] for n in (names or list(CLAIMS))]
    out = pathlib.Path(out)
    start = time.monotonic()
    dataset = _dataset(profile.data)  # fail early on a bad --data, and generate MNIST-1D once, before the workers start
    planned, skipped = plan(claims, profile, dataset)
    for name, reason in skipped.items():
        print(f"skipping {name}: its networks cannot train on {profile.data}: {reason}", file=sys.stderr)
    results = run_all([r for rs in planned.values() for r in rs], out, jobs or default_jobs(), progress)
    doc = {
        "format": 1,
        "result_version": RESULT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": {"name": profile.name, "seeds": profile.seeds, "data": profile.data},
        "versions": versions(),
        "claims": [
            skip(c, skipped[c.name]) if c.name in skipped else judge(c, [Run(r, results[r.key()]) for r in planned[c.name]])
            for c in claims
        ],
        "runs": {},
    }
    for config in (c for rs in planned.values() for c in rs):
        doc["runs"][config.key()] = {"config": config.to_dict(), "result": results[config.key()]}
    doc["seconds"] = round(time.monotonic() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(doc, indent=1).encode())
    report.write(out / "results.json")
    return doc
