"""The lab's executors and grouping, timed back to back on whole `reproduce` runs.

For each profile (default: tiny, then quick), from an empty cache each time, it times
`normlab.lab.reproduce.reproduce` end to end (start-up of the workers included):

    pool           the local WorkerPool, --jobs workers, runs grouped (the default)
    ray            a local Ray cluster of --jobs CPUs, started for the run, runs grouped
    pool, alone    the local WorkerPool with every run a group of its own (before grouping)

and prints each one's seconds, runs per second and member-steps per second, then Ray's
overhead (ray / pool, above 1: Ray is slower) and what grouping gives (pool alone /
pool, above 1: grouping is faster). The three come from the same machine, one after
the other, with --device (default cpu). State the machine and its load with any figure
you quote: run it on an idle machine.

    python benchmarks/bench_lab_executors.py                     # tiny and quick: three quick profiles back to back
    python benchmarks/bench_lab_executors.py --profiles tiny     # a few minutes
    python benchmarks/bench_lab_executors.py --quick             # tiny, one claim: for the test suite
    python benchmarks/bench_lab_executors.py --profiles quick --executors pool ray --out DIR
                                           # two quick profiles; each run's OUT kept in DIR/<profile>-<executor>

With --out the runs' folders are kept (they must not exist yet: each run starts from an
empty cache), so that their results.json can be compared: the pool's and Ray's numbers
are the same on one machine.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

from normlab.lab import reproduce as rep
from normlab.lab.claims import PROFILES
from normlab.lab.executors import RayExecutor, WorkerPool
from normlab.lab.fingerprint import fingerprint


def timed(profile, claims, jobs: int, device: str, how: str, keep: pathlib.Path | None = None) -> dict:
    """One reproduce from an empty cache (``keep``, when given, is its OUT): seconds, runs and member-steps."""
    members = rep.MAX_MEMBERS
    start = time.perf_counter()
    executor = RayExecutor(num_cpus=jobs) if how == "ray" else WorkerPool(jobs)
    if how == "pool, alone":
        rep.MAX_MEMBERS = 1
    try:
        with tempfile.TemporaryDirectory() as scratch:
            out = keep or scratch
            doc = rep.reproduce(claims, profile, out, jobs, progress=False, executor=executor, device=device)
    finally:
        rep.MAX_MEMBERS = members
        executor.shutdown()
    seconds = time.perf_counter() - start
    steps = sum(r["config"]["steps"] for r in doc["runs"].values())
    return {"seconds": seconds, "runs": len(doc["runs"]), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["tiny", "quick"], choices=sorted(PROFILES))
    parser.add_argument("--jobs", type=int, default=rep.default_jobs())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--executors", nargs="+", default=["pool", "ray", "pool, alone"], choices=["pool", "ray", "pool, alone"])
    parser.add_argument("--out", type=pathlib.Path, help="keep each run's OUT in OUT/<profile>-<executor> (must not exist yet)")
    parser.add_argument("--quick", action="store_true", help="the tiny profile, one claim (a check that the script runs)")
    args = parser.parse_args()
    profiles = ["tiny"] if args.quick else args.profiles

    def kept(name, how):
        return None if args.out is None else args.out / f"{name}-{how.replace(', ', '-')}"

    taken = [str(d) for name in profiles for how in args.executors if kept(name, how) and kept(name, how).exists()]
    if taken:
        parser.error(f"--out: {', '.join(taken)} already exist; each run starts from an empty cache")

    claims = ["stable-distributions"] if args.quick else None
    fp = fingerprint()
    print(f"# {fp['cpu']}, {os.cpu_count()} cores, {args.jobs} workers, device {args.device}, torch {fp['torch']}")
    print(f"{'profile':<8} {'executor':<12} {'seconds':>8} {'runs':>6} {'runs/s':>8} {'steps/s':>9}")
    for name in profiles:
        rows = {}
        for how in args.executors:
            r = rows[how] = timed(PROFILES[name], claims, args.jobs, args.device, how, kept(name, how))
            print(f"{name:<8} {how:<12} {r['seconds']:8.1f} {r['runs']:6d} {r['runs'] / r['seconds']:8.2f} {r['steps'] / r['seconds']:9.0f}", flush=True)
        if "pool" in rows and "ray" in rows:
            print(f"{name:<8} ray / pool (Ray's overhead): {rows['ray']['seconds'] / rows['pool']['seconds']:.2f}x")
        if "pool" in rows and "pool, alone" in rows:
            print(f"{name:<8} pool alone / pool (what grouping gives): {rows['pool, alone']['seconds'] / rows['pool']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
