"""The report's reading order and its figures' conventions: the headline first (each claim, its
verdict and the effect that decides it), the smoke-test warning on the tiny profile, references
with full citations; one colour per normalization, legends outside the data, twice the resolution."""

import io
import re

import pytest
from PIL import Image

from normlab.lab import plots, report, stats
from normlab.lab import reproduce as rep
from normlab.lab.claims.base import Claim
from normlab.lab.references import ARTICLES, PAPERS


def fake(name, parts, headline=""):
    """A claim judged on fixed per-seed values: ``parts`` is [(claimed, against, smallest)]."""
    return Claim(
        name, "Somebody 2020", "a long statement of the claim; with details", "values", "above",
        runs=lambda profile: [],
        summarize=lambda runs: {"x": stats.stat([1.0, 2.0])},
        parts=lambda f: [stats.compare(a, b, smallest=s, what=f"part {i}") for i, (a, b, s) in enumerate(parts)],
        plot=None,
        headline=headline,
    )


def doc(profile="quick"):
    strong = ([5.0, 5.1, 4.9, 5.2], [0.0, 0.1, -0.1, 0.05], 1.0)
    weak = ([1.2, 1.3, 1.1, 1.25], [0.0, 0.1, -0.1, 0.05], 0.5)
    absent = ([0.0, 0.01, -0.01, 0.02], [0.0, 0.01, -0.01, 0.0], 1.0)
    claims = [
        rep.judge(fake("two-parts", [strong, weak], headline="BN helps, twice"), []),
        rep.judge(fake("absent", [strong, absent]), []),
    ]
    return {
        "profile": {"name": profile, "rounds": [4], "data": "mnist1d", "seed_offset": 0},
        "versions": {"python": "3", "platform": "x"}, "created": "now", "fingerprint": {}, "claims": claims, "runs": {},
    }


def test_the_headline_gives_each_claim_its_verdict_and_deciding_effect():
    rows = report.headline(doc())
    assert [r[:3] for r in rows] == [("two-parts", "BN helps, twice", "reproduced"),
                                     ("absent", "a long statement of the claim; with details", "not reproduced")]
    assert rows[0][3].startswith("part 1: 1.") and "interval [" in rows[0][3]  # the weaker of the two parts
    assert rows[1][3].startswith("part 1: ")  # the part that is not reproduced


@pytest.mark.parametrize("profile", ["quick", "tiny"])
def test_reading_order_and_the_smoke_test(profile):
    d = doc(profile)
    md, page = report.markdown(d, {}), report.page(d, {})
    smoke = "Smoke test: the tiny profile" in md
    assert smoke == (profile == "tiny") and smoke == ("Smoke test: the tiny profile" in page)
    assert ('class="smoke-test"' in page) == (profile == "tiny")  # the verdicts' colours muted
    assert md.index("| claim | what it says | verdict |") < md.index("## Every claim") < md.index("## two-parts") < md.index("## References")
    assert page.index('class="headline"') < page.index("<h2>Every claim") < page.index('id="references"')
    assert ("Its verdicts mean nothing" in report.table(d)) == (profile == "tiny")


def test_references_are_full_citations():
    md = report.markdown(doc(), {})
    for ref in PAPERS:
        assert ref.authors and ref.year and ref.title and ref.venue and ref.link.startswith("https://")
        assert f"- {ref.text()}" in md
    assert len(ARTICLES) == 5 and all(ref.title and ref.venue for ref in ARTICLES)
    for ref in ARTICLES:  # each sentence of a citation starts with a capital (title, then what the article shows)
        assert f"- {ref.text()}" in md and not re.search(r"\. [a-z]", ref.text()), ref.text()
    assert "Ioffe, S., & Szegedy, C. (2015). Batch Normalization: Accelerating" in md
    assert "seed 00" not in md.lower() and "seeds 00" not in md.lower()


def test_one_colour_per_normalization():
    bn = plots.COLORS["bn"]
    assert {plots.color(x) for x in ("BN", "sigmoid, BN", "BN + dropout", "BN before", "BN, shared statistics",
                                     "large batch (256), BN")} == {bn}
    names = {"no BN": "none", "none": "none", "dropout": "none", "no normalization": "none", "relu, no BN": "none",
             "no BN + noise": "none + noise", "noisy BN": "noisy bn", "large batch (256), ghost BN (16)": "ghost bn",
             "Renorm": "renorm", "BN, statistics per step": "bn per step", "GN": "gn", "LN": "ln", "LayerNorm": "ln"}
    for label, name in names.items():
        assert plots.color(label) == plots.COLORS[name], label
    assert len(set(plots.COLORS.values())) == len(plots.COLORS)
    assert plots.color("training accuracy") is None


def test_legends_outside_the_data_and_twice_the_resolution():
    fig, (ax,) = plots.figure(width=5.0, height=3.6)
    line = plots.band(ax, [0, 1, 2], [[0, 1, 2], [0, 1.5, 2.5]], "BN")
    assert line.get_color() == plots.COLORS["bn"]
    legend = plots.legend(ax)
    fig.canvas.draw()
    box, axes = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes.x1  # to the right of the axes, over no data
    with Image.open(io.BytesIO(plots.png(fig))) as image:
        assert image.size[0] >= 2 * 110 * 5.0 * 0.9  # 220 dpi: about twice the pixels of the 110 dpi it had
