"""A one-line progress bar with ETA on stderr, for loops that take a while; no dependency."""

from __future__ import annotations

import sys
import time


def progress(iterable, total: int | None = None, desc: str = "", enabled: bool | None = None, file=None):
    """Yield the items of ``iterable`` and redraw a bar at most ten times a second.

    ``enabled=None`` draws only when ``file`` (stderr by default) is a terminal, so logs
    and captured output stay clean. Without ``total`` it shows a count and a rate.
    """
    file = file if file is not None else sys.stderr
    if enabled is None:
        enabled = hasattr(file, "isatty") and file.isatty()
    if not enabled:
        yield from iterable
        return
    start = last = time.perf_counter()
    done = 0

    def draw(final: bool = False) -> None:
        elapsed = time.perf_counter() - start
        if total:
            filled = int(20 * done / total)
            eta = elapsed / done * (total - done) if done else 0.0
            text = f"{desc} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total} {elapsed:.0f}s, ETA {eta:.0f}s"
        else:
            text = f"{desc} {done} in {elapsed:.0f}s ({done / max(elapsed, 1e-9):.1f}/s)"
        file.write("\r" + text + ("\n" if final else ""))
        file.flush()

    try:
        for item in iterable:
            yield item
            done += 1
            if time.perf_counter() - last >= 0.1:
                last = time.perf_counter()
                draw()
    finally:
        draw(final=True)
