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
import math
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
from .claims.base import FAILED, SKIPPED
from .executors import LOST, WorkerLost, WorkerPool
from .fingerprint import fingerprint, fingerprint_id
from .models import build, macs, torch_calls
from .train import RESULT_VERSION, RunConfig, group_key, resolve_device, train_group

__all__ = [
    "reproduce", "run_all", "plan", "groups", "work", "judge", "load_run", "default_jobs", "MAX_MEMBERS", "RETRIES", "OutputError",
]

MAX_MEMBERS = 20  # runs per group: past about this many, a group trains no faster per run on a CPU


def default_jobs() -> int:
    """Worker processes: one per core, at most 8 (the runs are single-threaded)."""
    return max(1, min(os.cpu_count() or 1, 8))


def _stamps(out: pathlib.Path) -> dict:
    """The cached runs' file names under ``out`` with their modification times."""
    runs = out / "runs"
    return {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")} if runs.is_dir() else {}


def _run_path(out: pathlib.Path, config: RunConfig) -> pathlib.Path:
    return out / "runs" / f"{config.key()}.json"


class OutputError(OSError):
    """The output folder cannot be written (read-only, full): one line naming the folder."""


def _write(path: pathlib.Path, data: bytes) -> None:
    """``path`` written whole or not at all (a temporary file renamed); an OSError becomes an :class:`OutputError`."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise OutputError(f"cannot write {path.parent}: {e.strerror or e} (nothing half-written is left there)") from e


def _damage(stored, config: RunConfig) -> str | None:
    """What is wrong with a cached run of ``config`` as read from JSON, or None when it can be used:
    its config must be ``config``'s, and the numbers the claims read must be numbers, finite."""
    if not isinstance(stored, dict):
        return f"it holds {type(stored).__name__}, not a run"
    if stored.get("config") != config.to_dict():
        return "its config is not the one its name stands for"
    result = stored.get("result")
    if not isinstance(result, dict):
        return "it has no result"
    for name in ("final_test_accuracy", "final_train_accuracy"):
        x = result.get(name)
        if not _number(x):
            return f"its {name} is {x!r}, not a finite number"
    accuracies = result.get("test_accuracy")
    if not isinstance(accuracies, list) or not accuracies or not all(_number(x) for x in accuracies):
        return "its test_accuracy is not a list of finite numbers"
    if not all(x is None or _number(x) for x in result.get("train_loss") or []):
        return "its train_loss holds a value that is not a finite number"
    return None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_run(out: pathlib.Path, config: RunConfig) -> dict | None:
    """The cached run of ``config`` under ``out`` (``{"config", "result", "fingerprint"}``), or None.

    A file that is there but cannot be used (not JSON, the wrong shape, NaN where a number
    must be: :func:`_damage`) is moved aside to ``runs/damaged/`` with a line on stderr
    saying so, and the run counts as missing: it is trained again."""
    path = _run_path(out, config)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        why = f"it cannot be read ({e})"
    else:
        try:
            stored = json.loads(text)
        except ValueError:
            why = "it is not valid JSON"
        else:
            why = _damage(stored, config)
            if why is None:
                return stored
    aside = path.parent / "damaged" / path.name
    try:
        aside.parent.mkdir(exist_ok=True)
        os.replace(path, aside)
        where = f"moved to {aside}"
    except OSError as e:
        where = f"left where it is ({e.strerror or e})"
    print(f"normlab reproduce: the cached run {path} is damaged ({why}); {where}; it is trained again", file=sys.stderr)
    return None


@functools.lru_cache(maxsize=2)
def _dataset(name: str, preprocess: str = "standardize") -> datasets.Dataset:
    return datasets.load(name, preprocess)


def _data_of(config: RunConfig) -> datasets.Dataset:
    return _dataset(config.data, config.preprocess)


def work(configs: list[RunConfig], device: str = "cpu", dataset: datasets.Dataset | None = None) -> tuple[list[dict], dict]:
    """Train one group on ``device`` (in whatever process an executor runs it) and return each
    member's result and the fingerprint of the machine and device that trained them. The data
    is ``dataset``, or loaded here by its name and preprocessing (``configs[0]``)."""
    ds = dataset if dataset is not None else _data_of(configs[0])
    used = resolve_device(device)
    results = train_group(configs, ds, device=used)
    fp = fingerprint(str(used))
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


RETRIES = 2  # a group whose worker dies is tried at most 1 + RETRIES times, then its runs are reported failed


def run_all(
    configs: list[RunConfig],
    out: pathlib.Path,
    jobs: int = 1,
    progress: bool = True,
    desc: str = "",
    *,
    executor: cf.Executor | None = None,
    device: str = "cpu",
    retries: int = RETRIES,
) -> tuple[dict, dict, dict]:
    """Train the configs not cached under ``out`` and return ``(results, fingerprints, failed)``:
    the result of every config that has one, by key; the fingerprints of the machines that
    trained them, by :func:`fingerprint_id`; and why each run that could not be trained
    (its worker died ``1 + retries`` times) failed, by key.

    The groups (:func:`groups`) go to ``executor``, any :class:`concurrent.futures.Executor`
    (:mod:`normlab.lab.executors`), longest first; without one, to a :class:`WorkerPool` of
    ``jobs`` processes made for this call, or, with ``jobs=1``, this process. Each group's
    runs are written to ``out/runs/`` by this process as soon as the group comes back, so
    a driver killed at any time loses no finished group, and any later call, with any
    executor, reuses them."""
    out = pathlib.Path(out)
    unique = {c.key(): c for c in configs}
    results, fingerprints, failed = {}, {}, {}
    for k, c in unique.items():
        stored = load_run(out, c)
        if stored is not None:
            results[k] = stored["result"]
            fp = stored.get("fingerprint")
            if isinstance(fp, dict):
                fingerprints[fingerprint_id(fp)] = fp
    todo = sorted(groups([c for k, c in unique.items() if k not in results]), key=_cost, reverse=True)
    if not todo:
        return results, fingerprints, failed
    costs = [_cost(g) for g in todo]
    runs = sum(len(g) for g in todo)
    own = executor is None and jobs > 1
    if own:
        executor = WorkerPool(min(jobs, len(todo)))
    bar = Progress(len(todo), work=sum(costs), unit="groups", desc=desc, parts=runs, part_unit="runs") if progress else None
    if bar:
        if executor is None or hasattr(executor, "workers"):
            where = f"{min(getattr(executor, 'workers', 1), len(todo))} at a time"
        else:
            where = str(executor) if type(executor).__str__ is not object.__str__ else f"on {type(executor).__name__}"
        bar.stream.write(f"{runs} runs to train ({len(results)} already done), in {len(todo)} groups, {where}\n")
        bar.show()

    def store(i, trained, fp):
        fingerprints[fingerprint_id(fp)] = fp
        for c, r in zip(todo[i], trained):
            _write(_run_path(out, c), json.dumps({"config": c.to_dict(), "result": r, "fingerprint": fp}).encode())
            results[c.key()] = r
        if bar:
            bar.advance(costs[i], 1, len(todo[i]))

    if executor is None:
        for i, g in enumerate(todo):
            store(i, *work(g, device))
        return results, fingerprints, failed
    shared: dict[tuple, object] = {}  # each dataset (name, preprocessing) shipped to the executor once, where it can

    def data(group):
        if not hasattr(executor, "share"):
            return None
        key = (group[0].data, group[0].preprocess)
        if key not in shared:
            shared[key] = executor.share(_data_of(group[0]))
        return shared[key]
    pending: dict[cf.Future, int] = {}
    attempts = [0] * len(todo)

    def submit(i):
        attempts[i] += 1
        try:
            future = executor.submit(work, todo[i], device, data(todo[i]))
        except (cf.BrokenExecutor, RuntimeError) as e:  # an executor that cannot take more: the group is lost
            future = cf.Future()
            future.set_exception(e if isinstance(e, LOST) else WorkerLost(str(e)))
        pending[future] = i

    try:
        for i in range(len(todo)):
            submit(i)
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                e = future.exception()
                if e is None:
                    store(i, *future.result())
                elif not isinstance(e, LOST):
                    raise e
                elif attempts[i] <= retries:
                    _say(bar, f"a group of {len(todo[i])} runs was lost ({e}); trying it again, attempt {attempts[i] + 1} of {retries + 1}")
                    submit(i)
                else:
                    why = f"its worker died {attempts[i]} times; the last time: {e}"
                    _say(bar, f"a group of {len(todo[i])} runs failed: {why}")
                    failed.update({c.key(): why for c in todo[i]})
                    if bar:
                        bar.advance(costs[i], 1, len(todo[i]))
    finally:
        for future in pending:
            future.cancel()
        if own and pending:  # interrupted: what is still training is not waited for
            executor.terminate()
        elif own:
            executor.shutdown()
    return results, fingerprints, failed


def _say(bar: Progress | None, line: str) -> None:
    stream = bar.stream if bar else sys.stderr
    stream.write(f"\nnormlab reproduce: {line}\n" if bar and bar.tty else f"normlab reproduce: {line}\n")
    stream.flush()


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


def failed(claim: Claim, runs: list[RunConfig], lost: dict, look: int = 1, looks: int = 1) -> dict:
    """The entry of a claim some of whose runs could not be trained (``lost``: :func:`run_all`'s
    ``failed``): what it declares, and why it has no verdict."""
    why = [lost[r.key()] for r in runs if r.key() in lost]
    explanation = f"{len(why)} of its {len(runs)} runs could not be trained ({why[0]}); run reproduce again to retry them"
    return {**_declared(claim), "runs": [], "figures": {}, "verdict": FAILED, "explanation": explanation, "look": look, "looks": looks}


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
    executor: cf.Executor | None = None,
    device: str = "cpu",
) -> dict:
    """Test the claims ``names`` under ``profile``; write ``out``/results.json and the report.

    By default all the claims, or in the sources profile all the source experiments
    (:func:`normlab.lab.claims.for_profile`); the tiny profile runs either, with a test budget.
    The runs train on ``device`` ("cpu", "cuda" or "auto": CUDA where there is one) through
    ``executor`` (see :func:`run_all`); without one, in a :class:`WorkerPool` of ``jobs``
    processes (default: :func:`default_jobs`) that lives through every round.
    """
    from . import report

    profile = profile or PROFILES["quick"]
    claims = for_profile(profile.name, names)
    out = pathlib.Path(out)
    start = time.monotonic()
    cached = _stamps(out)  # what was cached before: the report says how much this call trained
    if executor is None:
        resolve_device(device)  # fail early on --device cuda without CUDA; elsewhere the workers decide
    skipped = plan(claims, profile)[1]  # loads every dataset (MNIST-1D generated once) before the workers start
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    entries = {c.name: skip(c, skipped[c.name]) for c in claims if c.name in skipped}
    planned, results, fingerprints = {}, {}, {}
    pending = [c for c in claims if c.name not in skipped]
    jobs = jobs or default_jobs()
    own = executor is None and jobs > 1 and bool(pending)
    if own:
        executor = WorkerPool(jobs)
    try:
        for look in range(1, profile.looks + 1):
            if not pending:
                break
            at = profile.at(look)
            for c in pending:
                planned[c.name] = c.runs(at)
            desc = f"round {look}/{profile.looks}, {profile.rounds[look - 1]} seeds:" if profile.looks > 1 else ""
            todo = [r for c in pending for r in planned[c.name]]
            got, fps, lost = run_all(todo, out, jobs, progress, desc, executor=executor, device=device)
            results.update(got)
            fingerprints.update(fps)
            for c in pending:
                if any(r.key() in lost for r in planned[c.name]):
                    entries[c.name] = failed(c, planned[c.name], lost, look, profile.looks)
                else:
                    entries[c.name] = judge(c, [Run(r, results[r.key()]) for r in planned[c.name]], look, profile.looks)
            pending = [c for c in pending if entries[c.name]["verdict"] == stats.INCONCLUSIVE]
    except BaseException:
        if own:
            executor.terminate()
        raise
    if own:
        executor.shutdown()
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
    for config in (c for rs in planned.values() for c in rs if c.key() in results):
        doc["runs"][config.key()] = {"config": config.to_dict(), "result": results[config.key()]}
    doc["seconds"] = round(time.monotonic() - start, 1)
    now = _stamps(out)
    doc["trained"] = sum(cached.get(f"{k}.json") != now.get(f"{k}.json") for k in doc["runs"])  # new or rewritten
    _write(out / "results.json", json.dumps(doc, indent=1).encode())
    try:
        report.write(out / "results.json")
    except OSError as e:
        raise OutputError(f"cannot write the report in {out}: {e.strerror or e} (results.json is written; "
                          f"python -m normlab.lab.report {out / 'results.json'} writes the report again)") from e
    return doc
