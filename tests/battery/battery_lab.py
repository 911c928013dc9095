"""The lab's battery: damaged data through ``normlab.lab.data.load`` and through ``normlab reproduce --data``.

Every bad MNIST IDX folder and CIFAR batch of ``tests/lab/test_data.py`` (its ``IDX_CASES`` and
``CIFAR_CASES``, reused, not copied) is a case whose outcome is declared there: a ``DataError`` whose
message names the file and what is wrong with it. Through the command line the same damage is one line on
stderr, exit status 2, no traceback.

:data:`PENDING` is where the faults of the lab's runs go (a killed driver or worker, a damaged cache file,
an unwritable output folder): their handling is being built on another branch, which adds its cases here.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import tempfile
from dataclasses import dataclass

_HERE = pathlib.Path(__file__).resolve().parent
PENDING: list = []  # lab x fault cases of the lab's run handling (driver or worker killed, damaged cache, full disk)


def _lab_tests():
    """tests/lab/test_data.py, for its tables of damaged files and the helpers that write them."""
    import sys

    sys.path.insert(0, str(_HERE.parent / "lab"))  # (its own imports: dataset_files)
    spec = importlib.util.spec_from_file_location("battery_lab_data_cases", _HERE.parent / "lab" / "test_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_LAB = _lab_tests()


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
    return cases + PENDING


def expected(case: LabCase) -> str:
    return "DataError naming the file" if case.through == "load" else "one line, exit status 2"


def _folder(case: LabCase, root: pathlib.Path) -> tuple[pathlib.Path, str]:
    if case.format == "MNIST IDX":
        files, message = _LAB.IDX_CASES[case.fault]
        return _LAB._mnist_with(root, **files), message
    batch, message = _LAB.CIFAR_CASES[case.fault]
    return _LAB._cifar10_with(root, **batch), message


def run_lab(case: LabCase) -> tuple[str, str]:
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
