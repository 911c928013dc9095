"""A one-line progress bar with an estimate of the time left, on stderr; no dependency.

:class:`Progress` counts items that may cost unequal work (the lab's training runs,
weighted by their estimated cost); :func:`progress` wraps a loop whose items cost the
same (the batches of ``precise_batchnorm``). On a terminal the line is redrawn in
place; in a log (not a terminal) it is written once per tenth of the work, so logs stay
short but still show that a long job moves.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """``desc [#########.....] 12/40 runs  1:02 elapsed, about 0:48 left``.

    ``items`` is how many there are (``None``: unknown, then a count and a rate are
    shown); ``work`` their summed cost (default: one per item), which :meth:`advance`
    is told item by item and the bar and the time left follow. Items made of smaller
    ones (the lab's groups of runs) also count those: ``parts`` of them in all, in
    ``part_unit``, shown as ``3/10 groups, 45/200 runs``.
    """

    def __init__(self, items: int | None, *, work: float | None = None, desc: str = "", unit: str = "", stream=None,
                 parts: int | None = None, part_unit: str = ""):
        self.items, self.work = items, work if work is not None else items
        self.desc, self.unit = desc, unit
        self.parts, self.part_unit, self.parts_done = parts, part_unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.start = self._drawn_at = time.monotonic()
        self.finished, self.done = 0, 0.0
        self._tenth, self._width = -1, 0

    def advance(self, cost: float = 1.0, items: int = 1, parts: int = 0) -> None:
        """``items`` more finished (one by default), together costing ``cost`` and made of ``parts``."""
        self.finished += items
        self.done += cost
        self.parts_done += parts
        self.show()

    def show(self, final: bool = False) -> None:
        """Draw the line if it changed enough: on a terminal at most ten times a second, in a log once per tenth."""
        now = time.monotonic()
        final = final or (self.items is not None and self.finished >= self.items)
        frac = min(self.done / self.work, 1.0) if self.work else None
        if not final:
            if self.tty and now - self._drawn_at < 0.1 and self.finished:
                return
            if not self.tty and (frac is None or int(frac * 10) == self._tenth):
                return
        self._drawn_at = now
        self._tenth = int(frac * 10) if frac is not None else self._tenth
        elapsed = now - self.start
        if frac is None:
            rate = self.finished / max(elapsed, 1e-9)
            line = f"{self.finished} {self.unit} in {_clock(elapsed)} ({rate:.1f}/s)"
        else:
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            left = f"about {_clock(elapsed * (1 - frac) / frac)} left" if frac > 0 else "estimating"
            of = f", {self.parts_done}/{self.parts} {self.part_unit}" if self.parts is not None else ""
            line = f"[{bar}] {self.finished}/{self.items} {self.unit}{of}  {_clock(elapsed)} elapsed, {left}"
        line = f"{self.desc} {line}" if self.desc else line
        if self.tty:  # redraw in place, blanking what a longer previous line left
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def progress(iterable, total: int | None = None, desc: str = "", enabled: bool | None = None, file=None):
    """Yield the items of ``iterable`` with a :class:`Progress` line on ``file`` (stderr).

    ``enabled=None`` draws only when ``file`` is a terminal, so captured output stays clean.
    """
    file = file if file is not None else sys.stderr
    if enabled is None:
        enabled = getattr(file, "isatty", lambda: False)()
    if not enabled:
        yield from iterable
        return
    bar = Progress(total, desc=desc, unit="batches", stream=file)
    try:
        for item in iterable:
            yield item
            bar.advance()
    finally:
        if total is None or bar.finished < total:
            bar.show(final=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"
