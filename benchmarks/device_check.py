"""The GPU check of normlab's Triton kernels, for a machine with one CUDA GPU, torch and triton.

Runs, each under a time limit, and prints a summary last:

    1. environment   python, torch, triton, the GPU; what the tests need that is missing
    2. gpu tests     pytest -m gpu tests/gpu tests/kernels (the GPU tests and every kernel
                     test, on the device), in parallel processes, a limit per test
    3. benchmark     benchmarks/bench_gpu.py --quick --no-compile, stopping new cases at a limit

The project is not installed: its source runs from this checkout (PYTHONPATH=src), so
torch, triton and everything else stay as the machine has them and nothing is fetched.
``--install`` runs ``pip install --no-deps -e .`` first instead. With the default limits
it finishes within 8 minutes (environment seconds, tests 4.5 minutes, benchmark 2.5).

    python benchmarks/device_check.py                 # everything, default limits
    python benchmarks/device_check.py --out logs/     # also keep each step's full log there
    python benchmarks/device_check.py --dry-run       # print the commands, run nothing

Exit status: 0 when every step passed, 1 when one failed or ran out of time, 2 when
there is nothing to check here (no CUDA device, no triton) or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
NEEDED = ("torch", "numpy", "pytest", "xdist", "pytest_timeout", "hypothesis", "triton")  # import names


class Step(NamedTuple):
    name: str
    status: str  # "passed", "failed", "timed out", "skipped"
    seconds: float
    detail: str


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests-timeout", type=int, default=270, metavar="S", help="the tests' limit (seconds)")
    parser.add_argument("--test-timeout", type=int, default=120, metavar="S", help="one test's limit (seconds)")
    parser.add_argument("--bench-timeout", type=int, default=150, metavar="S", help="the benchmark's limit")
    parser.add_argument("--workers", type=int, default=None, help="test processes (default: min(8, CPUs))")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="a folder for each step's full log")
    parser.add_argument("--install", action="store_true", help="pip install --no-deps -e . instead of PYTHONPATH")
    parser.add_argument("--skip-bench", action="store_true", help="run the tests only")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    args = parser.parse_args(argv)
    for name in ("tests_timeout", "test_timeout", "bench_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def environment() -> tuple[dict, list[str]]:
    """What the machine has (versions, the GPU) and what the check needs that it lacks."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    info = {"python": sys.version.split()[0]}
    if "torch" not in missing:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["gpus"] = torch.cuda.device_count()
    if "triton" not in missing:
        import triton

        info["triton"] = triton.__version__
    return info, missing


def commands(args, workers: int, junit: pathlib.Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "install": [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
        "gpu tests": [py, "-m", "pytest", "-m", "gpu", "tests/gpu", "tests/kernels", "-q", "-n", str(workers),
                      f"--timeout={args.test_timeout}", "-p", "no:cacheprovider", f"--junitxml={junit}"],
        # new cases stop a minute before the limit: the case under way, the memory comparison and the report
        "benchmark": [py, "benchmarks/bench_gpu.py", "--quick", "--no-compile",
                      "--time-limit", str(max(10, args.bench_timeout - 60))],
    }


def run_step(name: str, cmd: list[str], timeout: float, env: dict, log: pathlib.Path | None) -> tuple[str, float, str]:
    """(status, seconds, output) of one command run under a time limit.

    The command runs in a process group of its own, ended as a whole at the limit
    (pytest's worker processes with it).
    """
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        status = "timed out"
    seconds = time.monotonic() - started
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n{text}")
    return status, seconds, text


def progress_counts(output: str) -> dict[str, int]:
    """passed / failed / errors / skipped from pytest's -q progress lines (a run stopped before its report)."""
    marks = "".join(m.group(1) for line in output.splitlines()
                    if (m := re.match(r"^([.FEsxX]+)\s*(?:\[\s*\d+%\])?$", line.strip())))
    counts = {"passed": marks.count(".") + marks.count("X"), "failed": marks.count("F"), "errors": marks.count("E"),
              "skipped": marks.count("s") + marks.count("x")}
    return counts if marks else {}


def test_counts(junit: pathlib.Path) -> dict[str, int]:
    """passed / failed / errors / skipped from a pytest JUnit XML report (empty if there is none)."""
    if not junit.exists():
        return {}
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped}


def failed_tests(junit: pathlib.Path, limit: int = 8) -> list[str]:
    if not junit.exists():
        return []
    names = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return names[:limit] + ([f"... {len(names) - limit} more"] if len(names) > limit else [])


def bench_detail(output: str) -> str:
    """The benchmark's verdict lines: geometric means and targets."""
    keep = [line.strip() for line in output.splitlines()
            if line.startswith(("geomean", "  training", "  never", "  bandwidth", "time limit"))]
    return "; ".join(keep) if keep else (output.strip().splitlines() or ["no output"])[-1]


def summary(info: dict, steps: list[Step]) -> str:
    gpu = info.get("gpu") or "no CUDA device"
    lines = [f"device check: {gpu}, python {info.get('python')}, torch {info.get('torch', 'missing')}, "
             f"triton {info.get('triton', 'missing')}",
             f"{'step':<14}{'status':<11}{'time':>7}  detail"]
    lines += [f"{s.name:<14}{s.status:<11}{s.seconds:>6.0f}s  {s.detail}" for s in steps]
    bad = [s.name for s in steps if s.status in ("failed", "timed out")]
    if steps[0].status != "passed":
        lines.append(f"result: nothing checked ({steps[0].detail})")
    else:
        lines.append("result: " + ("FAILED (" + ", ".join(bad) + ")" if bad else "passed"))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    info, missing = environment()
    workers = args.workers or max(1, min(8, os.cpu_count() or 1))
    junit = (args.out or pathlib.Path(os.environ.get("TMPDIR", "/tmp"))) / "device_check_tests.xml"
    cmds = commands(args, workers, junit)
    if args.dry_run:
        for name, cmd in cmds.items():
            if name != "install" or args.install:
                print(f"{name}: {' '.join(cmd)}")
        return 0
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if not args.install:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    steps = []
    reason = ("no CUDA device" if info.get("gpu") is None and "torch" not in missing else
              f"missing: {', '.join(missing)}" if missing else None)
    steps.append(Step("environment", "failed" if reason else "passed", 0.0,
                      reason or f"{info['gpus']} GPU(s); {workers} test processes; "
                      + ("pip install -e" if args.install else "source from PYTHONPATH=src")))
    names = (["install"] if args.install else []) + ["gpu tests"] + ([] if args.skip_bench else ["benchmark"])
    if reason:
        steps += [Step(name, "skipped", 0.0, reason) for name in names]
        print(summary(info, steps))
        return 2
    limits = {"install": 120, "gpu tests": args.tests_timeout, "benchmark": args.bench_timeout}
    for name in names:
        log = args.out / f"{name.replace(' ', '_')}.log" if args.out else None
        status, seconds, output = run_step(name, cmds[name], limits[name], env, log)
        if name == "gpu tests":
            counts = test_counts(junit) or progress_counts(output)
            detail = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no report"
            failed = failed_tests(junit)
            if failed:
                detail += "; failing: " + ", ".join(failed)
            if status == "timed out":
                detail = f"stopped at the {limits[name]} s limit; " + detail
        elif name == "benchmark":
            detail = bench_detail(output)
        else:
            detail = (output.strip().splitlines() or [""])[-1]
        print(f"--- {name}: {status} in {seconds:.0f} s", flush=True)
        if status != "passed" and name != "gpu tests":
            print(output[-4000:])
        steps.append(Step(name, status, seconds, detail))
        if name == "install" and status != "passed":
            break
    print(summary(info, steps))
    return 0 if all(s.status == "passed" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
