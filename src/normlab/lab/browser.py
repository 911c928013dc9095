"""The report's HTML page in a real headless browser: its console messages, and a screenshot.

The page is checked and pictured by Chromium itself (``apt-get install chromium`` on
Debian and Ubuntu), run headless with no sandbox and no GPU, nothing else installed::

    python -m normlab.lab.browser docs/report/report.html docs/report.png      # make report-png

writes a full-width screenshot of the page's first screens. :func:`console` returns what
the page wrote to the browser's console (a page that loads nothing, runs nothing and
fails nothing writes nothing): the suite checks the report with it.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

__all__ = ["chromium", "console", "screenshot", "BrowserError"]

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--disable-extensions")
_CONSOLE = re.compile(r':CONSOLE(?:\(\d+\)|:\d+)\] "(.*)", source: ')


class BrowserError(RuntimeError):
    """No browser, or the browser failed."""


def chromium() -> str | None:
    """The path of an installed Chromium (or Chrome), or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        raise BrowserError(f"no headless browser: install Chromium (apt-get install chromium); looked for {', '.join(NAMES)}")
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing of the user's is read or written
        done = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BrowserError(f"{exe} exited with status {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def console(page: str | pathlib.Path, timeout: float = 120) -> tuple[list[str], str]:
    """Load ``page`` (an HTML file) and return ``(console messages, the rendered DOM)``."""
    url = pathlib.Path(page).resolve().as_uri()
    done = _run(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", url], timeout)
    return [m.group(1) for m in map(_CONSOLE.search, done.stderr.splitlines()) if m], done.stdout


def screenshot(page: str | pathlib.Path, png: str | pathlib.Path, width: int = 1280, height: int = 1600, timeout: float = 120) -> pathlib.Path:
    """A ``width x height`` screenshot of ``page``'s top (CSS pixels), written to ``png``."""
    png = pathlib.Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    url = pathlib.Path(page).resolve().as_uri()
    _run([f"--window-size={width},{height}", f"--screenshot={png}", url], timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise BrowserError(f"the browser wrote no screenshot to {png}")
    return png


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m normlab.lab.browser REPORT.html OUT.png", file=sys.stderr)
        return 2
    page, png = argv
    if not pathlib.Path(page).is_file():
        print(f"normlab.lab.browser: no such page: {page}", file=sys.stderr)
        return 2
    try:
        print(screenshot(page, png))
    except BrowserError as e:
        print(f"normlab.lab.browser: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
