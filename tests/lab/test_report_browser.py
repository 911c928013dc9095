"""The report's HTML page in a real headless browser (Chromium): it loads, writes nothing to the
console, decodes every plot, and can be pictured. Skipped, with the reason, where no Chromium is
installed (Debian and Ubuntu: apt-get install chromium)."""

import pytest

from normlab.lab import browser
from normlab.lab import reproduce as rep
from normlab.lab.claims import PROFILES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser.chromium() is None, reason="no headless Chromium installed (apt-get install chromium)"),
]

# every image decoded, counted by the page itself: the browser reports it on its console
PROBE = """<script>window.addEventListener("load", () => { const img = [...document.images];
console.log("decoded " + img.filter(i => i.complete && i.naturalWidth > 0).length + " of " + img.length); });</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rep.reproduce(["faster-training", "noisy-bn"], PROFILES["tiny"], out, jobs=1, progress=False)
    return out / "report.html"


def test_the_page_renders_without_console_messages(page):
    messages, dom = browser.console(page)
    assert messages == [], messages
    assert "Smoke test: the tiny profile" in dom and '<table class="headline">' in dom and 'id="references"' in dom


def test_every_plot_decodes(page, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    messages, _ = browser.console(probed)
    assert messages == ["decoded 2 of 2"], messages


def test_nothing_is_wider_than_the_page(page, tmp_path):
    """The claims table (seven columns of long text) fits the browser's window, as the rest of the
    page does: no part of it is cut off or needs a horizontal scroll."""
    probe = """<script>window.addEventListener("load", () => { const t = document.querySelector("table.claims");
    console.log("page " + (document.documentElement.scrollWidth <= window.innerWidth) + ", table "
                + (t.scrollWidth <= t.clientWidth && t.getBoundingClientRect().right <= window.innerWidth)); });</script>"""
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    messages, _ = browser.console(probed)
    assert messages == ["page true, table true"], messages


def test_a_screenshot(page, tmp_path):
    from PIL import Image

    png = browser.screenshot(page, tmp_path / "report.png", width=1000, height=1200)
    with Image.open(png) as image:
        assert image.size == (1000, 1200)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "a blank or near-blank screenshot"


def test_the_command_line_says_what_is_missing(tmp_path, monkeypatch):
    assert browser.main([str(tmp_path / "nowhere.html"), str(tmp_path / "x.png")]) == 2
    monkeypatch.setattr(browser, "chromium", lambda: None)
    with pytest.raises(browser.BrowserError, match="install Chromium"):
        browser.screenshot(tmp_path / "nowhere.html", tmp_path / "x.png")
