"""The lab's report: ``report.md`` and a self-contained ``report.html``, both from ``results.json`` alone.

First the headline: each claim in one line, what it says, its verdict and the effect
that decided it with its interval (:func:`headline`); a tiny-profile report says first
that it is a smoke test whose verdicts mean nothing. Then one row per claim: the claim,
its source, what was measured, the criterion (as declared in code before running), the
figures (mean +- std over seeds),
the verdict's arithmetic (each part's effect, its interval, the seeds and the margin,
then its label) and the verdict. Below, a section per claim with its statement, the
verdict and its plot. A claim skipped because its networks do not fit the data says
why, in the table and in its section, and has no plot. A report whose runs were trained
on another machine or software setup than the rest (:mod:`normlab.lab.fingerprint`)
says so at the top. Last, the references: the papers and the tutorial articles the claims
come from (:mod:`normlab.lab.references`). The HTML embeds the plots as base64 PNG and
loads nothing else; the Markdown links the same PNGs, written to ``plots/`` beside it.
Every file is written atomically.

``python -m normlab.lab.report OUT/results.json`` rebuilds the report from the file;
``python -m normlab.lab.report A/results.json B/results.json`` prints the verdicts of
the two runs side by side (two seed sets, say).
"""

from __future__ import annotations

import base64
import html
import json
import pathlib
import sys

import math

from . import plots
from .._atomic import atomic_write
from .claims import Run, everything
from .claims.base import UNJUDGED
from .references import ARTICLES, PAPERS
from .stats import REPRODUCED, Part, fmt
from .train import RunConfig

__all__ = ["write", "table", "compare", "part_lines", "fingerprint_note", "headline", "SMOKE_TEST"]

SMOKE_TEST = (
    "Smoke test: the tiny profile trains 2 seeds per arm for a few steps, to check that every claim runs end to end. "
    "Its verdicts mean nothing: verdicts come from the quick profile (normlab reproduce) or the full one."
)

COLUMNS = ("claim", "source", "measured", "criterion", "figures (mean ± std over seeds)", "the verdict's arithmetic", "verdict")
WIDTHS = (9, 9, 14, 12, 22, 23, 11)  # percent of the page, per column of the HTML table: it fits the page, nothing scrolls


def figure_lines(figures: dict) -> list[str]:
    """``label: mean +- std`` for each figure; nested tables (e.g. per learning rate) are left to the plots."""
    lines = []
    for label, v in figures.items():
        if isinstance(v, dict) and "mean" in v:
            lines.append(f"{label}: {fmt(v['mean'])} ± {fmt(v['std'])}")
        elif isinstance(v, list):
            lines.append(f"{label}: {', '.join(fmt(x) for x in v) or 'none'}")
        elif not isinstance(v, dict):
            lines.append(f"{label}: {fmt(v)}")
    return lines


def _smoke(doc: dict) -> bool:
    return doc["profile"]["name"] == "tiny"


def deciding_part(claim: dict) -> dict | None:
    """The part a claim's verdict rests on: of a reproduced claim the weakest part (the lowest
    interval above its threshold), else the first part with the claim's verdict, else the first."""
    parts = claim.get("parts") or []
    same = [p for p in parts if p["verdict"] == claim["verdict"]] or parts
    if not same:
        return None
    if claim["verdict"] == REPRODUCED:
        return min(same, key=lambda p: (-math.inf if p["low"] is None else p["low"]) - p["threshold"])
    return same[0]


def effect_text(part: dict | None) -> str:
    """``what: effect [low, high]`` (with the interval's level), or "" without a part."""
    if part is None:
        return ""
    unit = f" {part['unit']}" if part.get("unit") else ""
    if part["low"] is None or part["high"] is None:
        return f"{part['what']}: {fmt(part['effect'])}{unit} (no interval)"
    return f"{part['what']}: {fmt(part['effect'])}{unit}, {part['level']:.0%} interval [{fmt(part['low'])}, {fmt(part['high'])}]"


def headline(doc: dict) -> list[tuple[str, str, str, str]]:
    """Each claim in one line: ``(name, what it says, verdict, the deciding effect with its interval)``."""
    rows = []
    for c in doc["claims"]:
        says = c.get("headline") or c["statement"]
        effect = c["explanation"] if c["verdict"] in UNJUDGED else effect_text(deciding_part(c))
        rows.append((c["name"], says, c["verdict"], effect))
    return rows


def _figures_cell(claim: dict) -> list[str]:
    """The figures column of a claim's row: its figures, or why it was skipped."""
    return [claim["explanation"]] if claim["verdict"] in UNJUDGED else figure_lines(claim["figures"])


def part_lines(claim: dict) -> list[str]:
    """Each part of a claim's verdict: effect, interval, seeds and margin, then its label."""
    out = []
    for p in claim.get("parts", []):
        part = Part(**{**p, "n": tuple(p["n"]), "low": _nan(p["low"]), "high": _nan(p["high"])})
        out.append(f"{part.text()}: {part.verdict}")
    return out


def _nan(x):
    return float("nan") if x is None else x


def _seeds(claim: dict) -> str:
    if claim["verdict"] in UNJUDGED:
        return "not run"
    return f"{claim['seeds']} seeds per arm, round {claim['look']} of {claim['looks']}"


def table(doc: dict) -> str:
    """The verdict table as plain text, for the terminal: each claim's verdict and its seeds per
    arm; a skipped or failed claim with its reason."""
    rows = [(c["name"], c["verdict"], _seeds(c)) for c in doc["claims"] if c["verdict"] not in UNJUDGED]
    width = max(len(c["name"]) for c in doc["claims"]) + 2
    vw = max([len(r[1]) for r in rows] + [len("verdict")]) + 2
    lines = [f"{'claim':<{width}}{'verdict':<{vw}}seeds"]
    for c in doc["claims"]:
        if c["verdict"] in UNJUDGED:
            lines.append(f"{c['name']:<{width}}{c['verdict']}: {c['explanation']}")
        else:
            lines.append(f"{c['name']:<{width}}{c['verdict']:<{vw}}{_seeds(c)}")
    return "\n".join(lines + ([f"({SMOKE_TEST})"] if _smoke(doc) else []))


def _short(claim: dict) -> str:
    return claim["verdict"] if claim["verdict"] in UNJUDGED else f"{claim['verdict']} ({claim['seeds']} seeds)"


def compare(docs: list[dict], labels: list[str]) -> str:
    """The verdicts of several results.json side by side, as a Markdown table, and how many agree."""
    by = [{c["name"]: c for c in d["claims"]} for d in docs]
    names = [c["name"] for c in docs[0]["claims"]]
    lines = ["| claim | " + " | ".join(labels) + " | same |", "|---|" + "---|" * (len(labels) + 1)]
    same = 0
    for name in names:
        cells = [_short(b[name]) if name in b else "-" for b in by]
        agree = len({b[name]["verdict"] if name in b else None for b in by}) == 1
        same += agree
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if agree else '**no**'} |")
    return "\n".join(lines + ["", f"{same} of {len(names)} verdicts the same."])


def fingerprint_note(doc: dict) -> str | None:
    """What to say when some runs come from another machine or software setup than the report, else None."""
    here = doc.get("fingerprint", {}).get("id")
    stamped = [r["result"].get("fingerprint") for r in doc["runs"].values()]
    others = sorted({i for i in stamped if i and i != here})
    if not others:
        return None
    fps = doc.get("fingerprints", {})

    def describe(i):
        fp = fps.get(i, {})
        return f"{i}: {fp.get('cpu', '?')}, {fp.get('torch_cpu_capability', '?')}, torch {fp.get('torch', '?')}"

    count = sum(i in others for i in stamped)
    return (
        f"{count} of {len(stamped)} runs were trained on another machine or software setup ({'; '.join(map(describe, others))}) "
        f"than this report's ({here}). Runs repeat bit for bit only on the same machine and software: these numbers mix setups."
    )


def _plots(doc: dict) -> dict[str, bytes]:
    images = {}
    for c in doc["claims"]:
        claim = everything().get(c["name"])
        if claim is None or c["verdict"] in UNJUDGED:
            continue
        runs = [Run(RunConfig.from_dict(doc["runs"][k]["config"]), doc["runs"][k]["result"]) for k in c["runs"]]
        images[c["name"]] = plots.png(claim.plot(runs, c["figures"]))
    return images


def _about(doc: dict) -> str:
    p, v, fp = doc["profile"], doc["versions"], doc.get("fingerprint", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("normlab", "torch", "numpy", "scipy", "mnist1d", "matplotlib") if v.get(k))
    offset = f", seeds from {p['seed_offset']}" if p.get("seed_offset") else ""
    machine = f"{fp.get('cpu', '?')} ({fp.get('torch_cpu_capability', '?')}, MKL {fp.get('mkl', '?')}, oneDNN {fp.get('onednn', '?')})"
    runs, trained = len(doc.get("runs", {})), doc.get("trained")
    # a run that reused a cache did not take its profile's time: say so beside the clock
    cache = f", training {trained} of its {runs} runs (the others from the cache)" if trained is not None and trained < runs else ""
    return (
        f"Profile {p['name']}, seeds per arm in rounds of {'/'.join(map(str, p['rounds']))}{offset}, data {p['data']}; "
        f"created {doc['created']} in {doc.get('seconds', '?')} s{cache}; Python {v['python']} on {v['platform']}, {machine}; {libs}."
    )


def _findings(c: dict) -> list[str]:
    return [f"{k}: {v}" for k, v in c.get("findings", {}).items()]


def markdown(doc: dict, images: dict[str, bytes]) -> str:
    def cell(text):
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = ["# normlab: claims about batch normalization, tested", ""]
    out += [f"> **{SMOKE_TEST}**", ""] if _smoke(doc) else []
    out += ["| claim | what it says | verdict | the effect that decides it |", "|---|---|---|---|"]
    out += [f"| [{n}](#{n}) | {cell(says)} | **{v}** | {cell(effect)} |" for n, says, v, effect in headline(doc)]
    out += ["", _about(doc), ""]
    note = fingerprint_note(doc)
    out += [f"**Note.** {note}", ""] if note else []
    out += ["## Every claim, its criterion and its arithmetic", ""]
    out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for c in doc["claims"]:
        figs = "<br>".join(cell(x) for x in _figures_cell(c))
        arithmetic = "<br>".join(cell(x) for x in [*part_lines(c), _seeds(c)])
        row = [f"[{c['name']}](#{c['name']})", c["source"], c["measured"], c["criterion"]]
        out.append("| " + " | ".join([*(cell(x) for x in row), figs, arithmetic, f"**{c['verdict']}**"]) + " |")
    for c in doc["claims"]:
        out += ["", f"## {c['name']}", "", f"*{c['source']}*: {c['statement']}", ""]
        out += [f"- **Measured**: {c['measured']}", f"- **Criterion**: {c['criterion']}"]
        if c["verdict"] in UNJUDGED:
            out += [f"- **Verdict**: **{c['verdict']}**: {c['explanation']}", ""]
        else:
            out += [f"- **Verdict** ({_seeds(c)}): **{c['verdict']}**"] + [f"  - {x}" for x in part_lines(c)] + [""]
        out += [f"- {x}" for x in [*_findings(c), *figure_lines(c["figures"])]]
        if c["name"] in images:
            out += ["", f"![{c['name']}](plots/{c['name']}.png)"]
    out += ["", "## References", "", "Papers:", ""] + [f"- {ref.text()}" for ref in PAPERS]
    out += ["", "The tutorial articles the project started from:", ""] + [f"- {ref.text()}" for ref in ARTICLES]
    return "\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.4em 0.6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
table.claims { width: 100%; table-layout: fixed; }
table.claims td { overflow-wrap: anywhere; }
.reproduced { background: #dff3df; font-weight: bold; }
.not-reproduced { background: #f8dcdc; font-weight: bold; }
.inconclusive { background: #f6efd2; font-weight: bold; }
.skipped, .failed { background: #eeeeee; color: #555; }
.about { color: #666; font-size: 0.85em; }
.note { background: #f6efd2; padding: 0.5em; }
img { max-width: 100%; }
section { margin-top: 2.5em; }
table.headline { font-size: 1em; margin: 1em 0 1.5em; }
table.headline td:nth-child(4) { color: #444; font-size: 0.9em; }
.smoke { background: #fff3cd; border: 2px solid #e0b000; padding: 0.6em 0.8em; font-weight: bold; }
body.smoke-test td.reproduced, body.smoke-test td.not-reproduced, body.smoke-test td.inconclusive,
body.smoke-test span.reproduced, body.smoke-test span.not-reproduced, body.smoke-test span.inconclusive
  { background: #eeeeee; color: #555; }
ol.references li { margin-bottom: 0.3em; }
"""


def page(doc: dict, images: dict[str, bytes]) -> str:
    e = html.escape

    def verdict(c):
        return f'<td class="{c["verdict"].replace(" ", "-")}">{e(c["verdict"])}</td>'

    def items(lines):
        return "".join(f"<li>{e(x)}</li>" for x in lines)

    rows = []
    for c in doc["claims"]:
        figs = "<br>".join(e(x) for x in _figures_cell(c))
        arithmetic = "<br>".join(e(x) for x in [*part_lines(c), _seeds(c)])
        cells = [f'<a href="#{e(c["name"])}">{e(c["name"])}</a>', e(c["source"]), e(c["measured"]), e(c["criterion"])]
        tds = [f"<td>{x}</td>" for x in cells] + [f'<td class="figures">{x}</td>' for x in (figs, arithmetic)]
        rows.append("<tr>" + "".join(tds) + verdict(c) + "</tr>")
    sections = []
    for c in doc["claims"]:
        img = ""
        if c["name"] in images:
            data = base64.b64encode(images[c["name"]]).decode()
            img = f'<img alt="{e(c["name"])}" src="data:image/png;base64,{data}">'
        sections.append(
            f'<section id="{e(c["name"])}"><h2>{e(c["name"])}</h2>'
            f'<p><em>{e(c["source"])}</em>: {e(c["statement"])}</p>'
            f'<p><b>Measured</b>: {e(c["measured"])}<br><b>Criterion</b>: {e(c["criterion"])}<br>'
            f'<b>Verdict</b> ({e(_seeds(c))}): <span class="{c["verdict"].replace(" ", "-")}">{e(c["verdict"])}</span>'
            + (f": {e(c['explanation'])}" if c["verdict"] in UNJUDGED else "") + "</p>"
            f"<ul>{items(part_lines(c))}</ul><ul>{items([*_findings(c), *figure_lines(c['figures'])])}</ul>{img}</section>"
        )
    head = "".join(f"<th>{e(h)}</th>" for h in COLUMNS)
    columns = "<colgroup>" + "".join(f'<col style="width: {w}%">' for w in WIDTHS) + "</colgroup>"
    note = fingerprint_note(doc)
    note_html = f'<p class="note"><b>Note.</b> {e(note)}</p>' if note else ""
    smoke = _smoke(doc)
    top = [
        f'<tr><td><a href="#{e(n)}">{e(n)}</a></td><td>{e(says)}</td>{verdict({"verdict": v})}<td>{e(effect)}</td></tr>'
        for n, says, v, effect in headline(doc)
    ]
    top_head = "".join(f"<th>{h}</th>" for h in ("claim", "what it says", "verdict", "the effect that decides it"))

    def cite(ref):
        link = f' <a href="{e(ref.link)}">{e(ref.link)}</a>' if ref.link else ""
        return f"<li>{e(ref.text().removesuffix(' ' + ref.link) if ref.link else ref.text())}{link}</li>"

    references = (
        '<section id="references"><h2>References</h2><p>Papers:</p>'
        f'<ol class="references">{"".join(cite(r) for r in PAPERS)}</ol>'
        "<p>The tutorial articles the project started from:</p>"
        f'<ol class="references">{"".join(cite(r) for r in ARTICLES)}</ol></section>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>normlab: claims about batch normalization</title><style>{CSS}</style></head>"
        f'<body class="{"smoke-test" if smoke else ""}">'
        "<h1>normlab: claims about batch normalization, tested</h1>"
        + (f'<p class="smoke">{e(SMOKE_TEST)}</p>' if smoke else "")
        + f'<table class="headline"><tr>{top_head}</tr>{"".join(top)}</table>'
        f'<p class="about">{e(_about(doc))}</p>{note_html}'
        "<h2>Every claim, its criterion and its arithmetic</h2>"
        f'<table class="claims">{columns}<tr>{head}</tr>{"".join(rows)}</table>{"".join(sections)}{references}</body></html>\n'
    )


def write(results: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Write report.md, report.html and plots/*.png next to ``results`` (a results.json)."""
    results = pathlib.Path(results)
    doc = json.loads(results.read_text())
    images = _plots(doc)
    folder = results.parent
    for name, png in images.items():
        atomic_write(folder / "plots" / f"{name}.png", png)
    md, page_path = folder / "report.md", folder / "report.html"
    atomic_write(md, markdown(doc, images).encode())
    atomic_write(page_path, page(doc, images).encode())
    return md, page_path


if __name__ == "__main__":
    paths = sys.argv[1:] or ["normlab-report/results.json"]
    if len(paths) == 1:
        for path in write(paths[0]):
            print(path)
    else:
        print(compare([json.loads(pathlib.Path(p).read_text()) for p in paths], paths))
