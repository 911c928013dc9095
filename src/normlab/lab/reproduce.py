"""``normlab reproduce``: run what the claims need, judge them, write results.json and the report.

1. Every claim lists its runs for a round of seeds (:class:`~normlab.lab.claims.Profile`);
   runs two claims share are trained once. A claim is skipped, with the reason on stderr
   and in the report, before anything is trained, when a run cannot train on its data
   (:meth:`RunConfig.misfit`: an rnn on images, more poolings than the images have
   pixels, more samples than the data has) or when the data it needs was not given
   (:class:`normlab.lab.data.NotGiven`: a source experiment's CIFAR set).
2. Runs that differ only in their seed (and initial scale) train together, up to
   :data:`MAX_MEMBERS` at a time, as one stacked model (:func:`normlab.lab.train.train_group`).
   A *group* is the unit of work: :func:`work` trains one in whatever process it is sent
   to and returns each member's result. Groups run in ``jobs`` worker processes (one
   thread each), longest first, with a progress bar and ETA on stderr.
3. Each run's result is cached in ``OUT/runs/<key>.json`` (key: a hash of its whole
   config, :meth:`RunConfig.key`), written atomically by this process as soon as its
   group ends, with the fingerprint of the machine that trained it
   (:mod:`normlab.lab.fingerprint`). Runs already there are not trained again, so an
   interrupted ``reproduce`` resumes where it stopped, and a second one only rebuilds
   the report. A member's result does not depend on its group, so any later group
   reuses it.
4. Each claim summarizes its runs into figures and a verdict (:mod:`normlab.lab.stats`).
   A claim still inconclusive gets the next round's seeds, up to the profile's last
   round. Everything is stored in ``OUT/results.json``; the report is then written from
   that file alone (:mod:`normlab.lab.report`).
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
from . import stats
from .claims import PROFILES, Claim, Profile, Run, for_profile
from .claims.base import SKIPPED
from .fingerprint import fingerprint, fingerprint_id
from .models import build, macs, torch_calls
from .train import RESULT_VERSION, RunConfig, group_key, train_group

__all__ = ["reproduce", "run_all", "plan", "groups", "work", "judge", "default_jobs", "MAX_MEMBERS"]

MAX_MEMBERS = 20  # runs per group: past about this many, a group trains no faster per run on a CPU


def default_jobs() -> int:
    """Worker processes: one per core, at most 8 (the runs are single-threaded)."""
    return max(1, min(os.cpu_count() or 1, 8))


def _run_path(out: pathlib.Path, config: RunConfig) -> pathlib.Path:
    return out / "runs" / f"{config.key()}.json"


def load_run(out: pathlib.Path, config: RunConfig) -> dict | None:
    """The cached run of ``config`` under ``out`` (``{"config", "result", "fingerprint"}``), or None
    (a damaged file counts as missing)."""
    try:
        stored = json.loads(_run_path(out, config).read_text())
    except (OSError, ValueError):
        return None
    return stored if stored.get("config") == config.to_dict() and "result" in stored else None


@functools.lru_cache(maxsize=2)
def _dataset(name: str, preprocess: str = "standardize") -> datasets.Dataset:
    return datasets.load(name, preprocess)


def _data_of(config: RunConfig) -> datasets.Dataset:
    return _dataset(config.data, config.preprocess)


def work(configs: list[RunConfig]) -> tuple[list[dict], dict]:
    """Train one group (in a worker process or in this one): each member's result, and the
    fingerprint of the machine that trained them."""
    results = train_group(configs, _data_of(configs[0]))
    fp = fingerprint()
    for r in results:
        r["fingerprint"] = fingerprint_id(fp)
    return results, fp


def groups(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """``configs`` in groups that train together: the same :func:`~normlab.lab.train.group_key`,
    at most :data:`MAX_MEMBERS` each, in seed order."""
    by: dict[str, list[RunConfig]] = {}
    for c in sorted(configs, key=lambda c: (c.seed, c.model.init_scale)):
        by.setdefault(group_key(c), []).append(c)
    return [members[i : i + MAX_MEMBERS] for members in by.values() for i in range(0, len(members), MAX_MEMBERS)]


SECONDS_PER_MAC = 7.4e-11
SECONDS_PER_CALL = 1.4e-5


def _cost(group: list[RunConfig]) -> float:
    """A group's expected training time, relative: per step, the multiply-adds of forward and
    backward (3x the forward's) of every member, and the per-call overhead of the torch calls
    of one forward pass, paid once for the whole group. The two rates were fitted to the full
    profile's runs, trained one at a time, two at a time on 2 cores (docs/claims.md, Cost)."""
    config = group[0]
    ds = _data_of(config)
    per_sample, calls = _work(config.model, ds.sample_shape, ds.classes)
    flops = SECONDS_PER_MAC * 3 * config.batch_size * per_sample * len(group)
    return config.steps * (flops + SECONDS_PER_CALL * calls)


@functools.lru_cache(maxsize=None)
def _work(spec, sample_shape, classes) -> tuple[int, int]:
    """Multiply-adds of one sample's forward pass, and torch calls of a forward pass."""
    model = build(spec, sample_shape, classes)
    return macs(model, sample_shape), torch_calls(model, sample_shape)


def run_all(configs: list[RunConfig], out: pathlib.Path, jobs: int = 1, progress: bool = True, desc: str = "") -> tuple[dict, dict]:
    """Results of every config by key, training those not cached under ``out``, and the
    fingerprints of the machines that trained them, by :func:`fingerprint_id`."""
    out = pathlib.Path(out)
    unique = {c.key(): c for c in configs}
    results, fingerprints = {}, {}
    for k, c in unique.items():
        stored = load_run(out, c)
        if stored is not None:
            results[k] = stored["result"]
            fp = stored.get("fingerprint")
            if fp:
                fingerprints[fingerprint_id(fp)] = fp
    todo = sorted(groups([c for k, c in unique.items() if k not in results]), key=_cost, reverse=True)
    if not todo:
        return results, fingerprints
    costs = [_cost(g) for g in todo]
    runs = sum(len(g) for g in todo)
    bar = Progress(runs, work=sum(costs), unit="runs", desc=desc) if progress else None
    if bar:
        workers = min(jobs, len(todo))
        bar.stream.write(f"{runs} runs to train ({len(results)} already done), in {len(todo)} groups, {workers} at a time\n")
        bar.show()

    def store(group, trained, fp):
        fingerprints[fingerprint_id(fp)] = fp
        for c, r in zip(group, trained):
            atomic_write(_run_path(out, c), json.dumps({"config": c.to_dict(), "result": r, "fingerprint": fp}).encode())
            results[c.key()] = r

    if jobs <= 1:
        for g, cost in zip(todo, costs):
            store(g, *work(g))
            if bar:
                bar.advance(cost, len(g))
        return results, fingerprints
    context = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
    pool = cf.ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context)
    try:
        futures = {pool.submit(work, g): (g, cost) for g, cost in zip(todo, costs)}
        for f in cf.as_completed(futures):
            g, cost = futures[f]
            store(g, *f.result())
            if bar:
                bar.advance(cost, len(g))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results, fingerprints


def plan(claims: list[Claim], profile: Profile) -> tuple[dict, dict]:
    """``({claim: its runs}, {claim: why it is skipped})``: a claim is skipped when the data
    it needs is not given, or when one of its runs cannot train on its data (the first such
    run's reason). Every dataset is loaded here, so that a bad one fails before training."""
    planned, skipped = {}, {}
    for claim in claims:
        try:
            runs = claim.runs(profile)
        except datasets.NotGiven as e:
            skipped[claim.name] = f"the data it needs is not given: it {e}"
            continue
        reason = next((r for r in (c.misfit(_data_of(c)) for c in runs) if r), None)
        if reason:
            skipped[claim.name] = f"its networks cannot train on this data: {reason}"
        else:
            planned[claim.name] = runs
    return planned, skipped


def skip(claim: Claim, explanation: str) -> dict:
    """A skipped claim's entry in results.json: what it declares, and why it was not run."""
    return {**_declared(claim), "runs": [], "figures": {}, "verdict": SKIPPED, "explanation": explanation}


def _declared(claim: Claim) -> dict:
    declared = {k: getattr(claim, k) for k in ("name", "source", "statement", "measured", "criterion")}
    return {**declared, "headline": claim.headline or claim.statement}


def judge(claim: Claim, runs: list[Run], look: int = 1, looks: int = 1) -> dict:
    """A claim's entry in results.json: what it declares, its figures and its verdict at round ``look`` of ``looks``."""
    figures = claim.summarize(runs)
    v = stats.decide(claim.parts(figures), look, looks)
    return {
        **_declared(claim),
        "runs": [r.config.key() for r in runs],
        "figures": figures,
        "verdict": v.verdict,
        "explanation": v.explanation,
        "parts": [p.as_dict() for p in v.parts],
        "findings": claim.findings(v) if claim.findings else {},
        "seeds": len({r.config.seed for r in runs}),
        "look": look,
        "looks": looks,
    }


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("normlab", "torch", "numpy", "scipy", "mnist1d", "matplotlib"):
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
    """Test the claims ``names`` under ``profile``; write ``out``/results.json and the report.

    By default all the claims, or in the sources profile all the source experiments
    (:func:`normlab.lab.claims.for_profile`); the tiny profile runs either, with a test budget.
    """
    from . import report

    profile = profile or PROFILES["quick"]
    claims = for_profile(profile.name, names)
    out = pathlib.Path(out)
    start = time.monotonic()
    skipped = plan(claims, profile)[1]  # loads every dataset (MNIST-1D generated once) before the workers start
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    entries = {c.name: skip(c, skipped[c.name]) for c in claims if c.name in skipped}
    planned, results, fingerprints = {}, {}, {}
    pending = [c for c in claims if c.name not in skipped]
    for look in range(1, profile.looks + 1):
        if not pending:
            break
        at = profile.at(look)
        for c in pending:
            planned[c.name] = c.runs(at)
        desc = f"round {look}/{profile.looks}, {profile.rounds[look - 1]} seeds:" if profile.looks > 1 else ""
        got, fps = run_all([r for c in pending for r in planned[c.name]], out, jobs or default_jobs(), progress, desc)
        results.update(got)
        fingerprints.update(fps)
        for c in pending:
            entries[c.name] = judge(c, [Run(r, results[r.key()]) for r in planned[c.name]], look, profile.looks)
        pending = [c for c in pending if entries[c.name]["verdict"] == stats.INCONCLUSIVE]
    here = fingerprint()
    doc = {
        "format": 2,
        "result_version": RESULT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "profile": {"name": profile.name, "rounds": list(profile.rounds), "data": profile.data, "seed_offset": profile.seed_offset},
        "versions": versions(),
        "fingerprint": {"id": fingerprint_id(here), **here},
        "fingerprints": fingerprints,
        "claims": [entries[c.name] for c in claims],
        "runs": {},
    }
    for config in (c for rs in planned.values() for c in rs):
        doc["runs"][config.key()] = {"config": config.to_dict(), "result": results[config.key()]}
    doc["seconds"] = round(time.monotonic() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(doc, indent=1).encode())
    report.write(out / "results.json")
    return doc
