"""The lab's battery: damaged data through ``normlab.lab.data.load`` and through ``normlab reproduce --data``.

Every bad MNIST IDX folder and CIFAR batch of ``tests/lab/test_data.py`` (its ``IDX_CASES`` and
``CIFAR_CASES``, reused, not copied) is a case whose outcome is declared there: a ``DataError`` whose
message names the file and what is wrong with it. Through the command line the same damage is one line on
stderr, exit status 2, no traceback.

:data:`RUN_FAULTS` are the faults of the lab's own runs, each with its declared outcome (:data:`RUN_OUTCOMES`):
every damaged cache file of ``tests/lab/test_executors.py`` (its ``DAMAGE``, reused) is moved aside to
``runs/damaged/`` and the run trained again to the same result; a worker killed once costs its group one retry
and changes nothing; a worker killed at every attempt leaves its runs failed and the others trained; a full or
read-only ``runs/`` folder is one line, exit status 2, and no file there. (The driver killed while its workers
train is ``test_workers_die_with_the_driver`` there: a subprocess of its own, too slow for a battery case.)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass

_HERE = pathlib.Path(__file__).resolve().parent


def _lab_tests(name: str):
    """tests/lab/NAME.py, for its tables of damaged files and the helpers that write them."""
    import sys

    sys.path.insert(0, str(_HERE.parent / "lab"))  # (its own imports: dataset_files)
    spec = importlib.util.spec_from_file_location(f"battery_lab_{name}", _HERE.parent / "lab" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LAB = _lab_tests("test_data")
_RUNS = _lab_tests("test_executors")


@dataclass(frozen=True)
class LabCase:
    fault: str
    format: str  # "MNIST IDX" or "CIFAR-10"
    through: str  # "load" or "reproduce --data"

    @property
    def id(self) -> str:
        return f"{self.through} | {self.format}: {self.fault}"

    @property
    def group(self) -> str:
        return "lab"


def lab_cases() -> list[LabCase]:
    cases = [LabCase(f, "MNIST IDX", "load") for f in sorted(_LAB.IDX_CASES)]
    cases += [LabCase(f, "CIFAR-10", "load") for f in sorted(_LAB.CIFAR_CASES)]
    cases += [LabCase(f, "MNIST IDX", "reproduce --data") for f in ("no training samples", "NaN pixels")
              if f in _LAB.IDX_CASES]
    cases += [LabCase(f, "CIFAR-10", "reproduce --data") for f in ("labels of a million", "two-dimensional labels")]
    return cases + RUN_FAULTS


def expected(case) -> str:
    if isinstance(case, RunFault):
        return RUN_OUTCOMES[case.through, case.fault] if (case.through, case.fault) in RUN_OUTCOMES else RUN_OUTCOMES[case.through]
    return "DataError naming the file" if case.through == "load" else "one line, exit status 2"


def _folder(case: LabCase, root: pathlib.Path) -> tuple[pathlib.Path, str]:
    if case.format == "MNIST IDX":
        files, message = _LAB.IDX_CASES[case.fault]
        return _LAB._mnist_with(root, **files), message
    batch, message = _LAB.CIFAR_CASES[case.fault]
    return _LAB._cifar10_with(root, **batch), message


def run_lab(case) -> tuple[str, str]:
    if isinstance(case, RunFault):
        return _RUN[case.through](case.fault)
    from normlab.lab.data import DataError, load

    with tempfile.TemporaryDirectory() as tmp:
        folder, message = _folder(case, pathlib.Path(tmp))
        if case.through == "load":
            try:
                load(str(folder))
            except DataError as e:
                ok = re.search(message, str(e)) is not None
                return ("DataError naming the file" if ok else "unclear error"), str(e)
            except Exception as e:  # noqa: BLE001
                return "traceback for a user's mistake", f"{type(e).__name__}: {e}"
            return "silent wrong answer", "loaded"
        import contextlib
        import io

        from normlab.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main(["reproduce", "--data", str(folder), "--profile", "tiny", "--out", str(pathlib.Path(tmp) / "out"),
                           "--claims", "faster-training"])
        lines = err.getvalue().strip().splitlines()
        if status == 2 and len(lines) == 1 and "Traceback" not in err.getvalue() and re.search(message, lines[0]):
            return "one line, exit status 2", lines[0]
        return ("traceback for a user's mistake" if "Traceback" in err.getvalue() else "unclear error"), err.getvalue()[-300:]


# --- the lab's own runs: damaged caches, lost workers, an unwritable output folder ---------------------


@dataclass(frozen=True)
class RunFault:
    fault: str
    through: str  # "cache", "worker" or "output"

    @property
    def id(self) -> str:
        return f"reproduce | {self.through}: {self.fault}"

    @property
    def group(self) -> str:
        return "lab"


RUN_OUTCOMES = {
    "cache": "moved aside, trained again",
    ("worker", "killed once"): "retried, same results",
    ("worker", "killed every time"): "its runs failed, the others trained",
    "output": "one line, exit status 2",
}
RUN_FAULTS = (
    [RunFault(kind, "cache") for kind in _RUNS.DAMAGE]
    + [RunFault("killed once", "worker"), RunFault("killed every time", "worker")]
    + [RunFault(f"runs/ refuses writes ({name})", "output") for name in ("ENOSPC", "EACCES")]
)
_CONFIGS = [c for c in _RUNS.CONFIGS if c.seed == 0]  # no normalization and BN, seed 0: two groups


@functools.lru_cache(maxsize=1)
def _trained() -> tuple[str, dict]:
    """A cache folder holding the runs of :data:`_CONFIGS`, trained once per session, and their results."""
    from normlab.lab import reproduce as rep

    folder = tempfile.mkdtemp(prefix="battery-runs-")
    results, _, _ = rep.run_all(_CONFIGS, pathlib.Path(folder), jobs=1, progress=False)
    return folder, _RUNS.untimed(results)


def _copy_of_trained(root: pathlib.Path) -> pathlib.Path:
    folder, _ = _trained()
    shutil.copytree(folder, root / "out")
    return root / "out"


def _cache(kind: str) -> tuple[str, str]:
    from normlab.lab import reproduce as rep

    with tempfile.TemporaryDirectory() as tmp:
        out = _copy_of_trained(pathlib.Path(tmp))
        config = _CONFIGS[0]
        path = out / "runs" / f"{config.key()}.json"
        text = _RUNS.damaged(json.loads(path.read_text()), kind)
        path.write_text(text)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            again, _, _ = rep.run_all([config], out, jobs=1, progress=False)
        said = err.getvalue().strip()
        aside = out / "runs" / "damaged" / path.name
        if not (aside.exists() and aside.read_text() == text and f"the cached run {path} is damaged (" in said):
            return "damaged file lost or read", said[-300:]
        if _RUNS.untimed(again)[config.key()] != _trained()[1][config.key()]:
            return "silent wrong answer", "the retrained run differs from the first"
        return "moved aside, trained again", said


def _killed_once(configs, device="cpu", dataset=None):
    """reproduce.work, except that the first attempt of each group kills its worker (a spawned process)."""
    from normlab.lab import reproduce as rep

    marker = pathlib.Path(os.environ["NORMLAB_BATTERY_MARKERS"]) / configs[0].key()
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return rep.work(configs, device, dataset)


def _killed_for_bn(configs, device="cpu", dataset=None):
    from normlab.lab import reproduce as rep

    if configs[0].model.norm == "bn":
        os.kill(os.getpid(), signal.SIGKILL)
    return rep.work(configs, device, dataset)


def _worker(fault: str) -> tuple[str, str]:
    from normlab.lab import executors
    from normlab.lab import reproduce as rep

    work = {"killed once": _killed_once, "killed every time": _killed_for_bn}[fault]
    _, first = _trained()
    real, old = rep.work, os.environ.get("NORMLAB_BATTERY_MARKERS")
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NORMLAB_BATTERY_MARKERS"] = tmp
        rep.work = work  # run_all submits reproduce.work as it finds it; the spawned workers import this module for it
        try:
            with executors.WorkerPool(1) as pool, contextlib.redirect_stderr(err):
                results, _, failed = rep.run_all(_CONFIGS, pathlib.Path(tmp) / "out", executor=pool, progress=False, retries=1)
        finally:
            rep.work = real
            os.environ.pop("NORMLAB_BATTERY_MARKERS") if old is None else os.environ.update(NORMLAB_BATTERY_MARKERS=old)
    bn = {c.key() for c in _CONFIGS if c.model.norm == "bn"}
    trained = _RUNS.untimed(results)
    said = err.getvalue()
    # each group lost once, or BN's lost, retried (retries=1), lost again and failed
    if said.count("was lost (worker process") != (2 if fault == "killed once" else 1):
        return "no worker was lost", said[-300:]
    if fault == "killed once":
        ok = not failed and trained == first
        return ("retried, same results" if ok else "silent wrong answer"), f"failed={failed}"
    ok = set(failed) == bn and trained == {k: v for k, v in first.items() if k not in bn}
    return ("its runs failed, the others trained" if ok else "silent wrong answer"), f"failed={failed}"


def _output(fault: str) -> tuple[str, str]:
    import normlab._atomic
    from normlab.cli import main

    code = getattr(errno, fault.split("(")[1].rstrip(")"))
    real = normlab._atomic.os.replace

    def refuse(src, dst):
        if pathlib.Path(dst).parent.name == "runs":
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    err = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "o"
        normlab._atomic.os.replace = refuse
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(["reproduce", "--profile", "tiny", "--claims", "stable-distributions", "--jobs", "1",
                               "--out", str(out)])
        finally:
            normlab._atomic.os.replace = real
        lines = err.getvalue().strip().splitlines()[-1:]  # above it: the progress lines
        left = sorted(p.name for p in (out / "runs").iterdir()) if (out / "runs").exists() else []
        if "Traceback" in err.getvalue():
            return "traceback for a user's mistake", err.getvalue()[-300:]
        if status == 2 and lines and lines[0].startswith(f"normlab reproduce: cannot write {out / 'runs'}"):
            return ("one line, exit status 2" if not left and not (out / "results.json").exists() else "half-written"), lines[0]
        return "unclear error", err.getvalue()[-300:]


_RUN = {"cache": _cache, "worker": _worker, "output": _output}
