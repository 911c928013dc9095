"""The lab's report: ``report.md`` and a self-contained ``report.html``, both from ``results.json`` alone.

At the top, one row per claim: the claim, its source, what was measured, the
criterion (as declared in code before running), the figures (mean +- std over seeds)
and the verdict. Below, a section per claim with its statement, the verdict's
arithmetic and its plot. A claim skipped because its networks do not fit the data says
why, in the table and in its section, and has no plot. The HTML embeds the plots as
base64 PNG; the Markdown links the same PNGs, written to ``plots/`` beside it. Every
file is written atomically.

``python -m normlab.lab.report OUT/results.json`` rebuilds the report from the file.
"""

from __future__ import annotations

import base64
import html
import json
import pathlib
import sys

from . import plots
from .claims import CLAIMS, Run
from .claims.base import SKIPPED, fmt
from .._atomic import atomic_write
from .train import RunConfig

__all__ = ["write", "table"]

COLUMNS = ("claim", "source", "measured", "criterion", "figures (mean ± std over seeds)", "verdict")


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


def _figures_cell(claim: dict) -> list[str]:
    """The figures column of a claim's row: its figures, or why it was skipped."""
    return [claim["explanation"]] if claim["verdict"] == SKIPPED else figure_lines(claim["figures"])


def table(doc: dict) -> str:
    """The verdict table as plain text, for the terminal; a skipped claim with its reason."""
    rows = [(c["name"], f"{SKIPPED}: {c['explanation']}" if c["verdict"] == SKIPPED else c["verdict"]) for c in doc["claims"]]
    width = max(len(r[0]) for r in rows) + 2
    return "\n".join([f"{'claim':<{width}}verdict", *(f"{n:<{width}}{v}" for n, v in rows)])


def _plots(doc: dict) -> dict[str, bytes]:
    images = {}
    for c in doc["claims"]:
        claim = CLAIMS.get(c["name"])
        if claim is None or c["verdict"] == SKIPPED:
            continue
        runs = [Run(RunConfig.from_dict(doc["runs"][k]["config"]), doc["runs"][k]["result"]) for k in c["runs"]]
        images[c["name"]] = plots.png(claim.plot(runs, c["figures"]))
    return images


def _about(doc: dict) -> str:
    p, v = doc["profile"], doc["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("normlab", "torch", "numpy", "mnist1d", "matplotlib") if v.get(k))
    return (
        f"Profile {p['name']}, {p['seeds']} seeds, data {p['data']}; created {doc['created']} in "
        f"{doc.get('seconds', '?')} s; Python {v['python']} on {v['platform']}; {libs}."
    )


def markdown(doc: dict, images: dict[str, bytes]) -> str:
    def cell(text):
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = ["# normlab: claims about batch normalization, tested", "", _about(doc), ""]
    out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for c in doc["claims"]:
        figs = "<br>".join(cell(x) for x in _figures_cell(c))
        row = [f"[{c['name']}](#{c['name']})", c["source"], c["measured"], c["criterion"], figs, f"**{c['verdict']}**"]
        out.append("| " + " | ".join(cell(x) if i != 4 else x for i, x in enumerate(row)) + " |")
    for c in doc["claims"]:
        out += ["", f"## {c['name']}", "", f"*{c['source']}*: {c['statement']}", ""]
        out += [f"- **Measured**: {c['measured']}", f"- **Criterion**: {c['criterion']}"]
        out += [f"- **Verdict**: **{c['verdict']}**: {c['explanation']}", ""]
        out += [f"- {x}" for x in figure_lines(c["figures"])]
        if c["name"] in images:
            out += ["", f"![{c['name']}](plots/{c['name']}.png)"]
    return "\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.4em 0.6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.figures { min-width: 24em; }
.reproduced { background: #dff3df; font-weight: bold; }
.not-reproduced { background: #f8dcdc; font-weight: bold; }
.inconclusive { background: #f6efd2; font-weight: bold; }
.skipped { background: #eeeeee; color: #555; }
.about { color: #666; font-size: 0.85em; }
img { max-width: 100%; }
section { margin-top: 2.5em; }
"""


def page(doc: dict, images: dict[str, bytes]) -> str:
    e = html.escape

    def verdict(c):
        return f'<td class="{c["verdict"].replace(" ", "-")}">{e(c["verdict"])}</td>'

    rows = []
    for c in doc["claims"]:
        figs = "<br>".join(e(x) for x in _figures_cell(c))
        cells = [f'<a href="#{e(c["name"])}">{e(c["name"])}</a>', e(c["source"]), e(c["measured"]), e(c["criterion"]), figs]
        tds = [f"<td>{x}</td>" for x in cells[:4]] + [f'<td class="figures">{cells[4]}</td>']
        rows.append("<tr>" + "".join(tds) + verdict(c) + "</tr>")
    sections = []
    for c in doc["claims"]:
        img = ""
        if c["name"] in images:
            data = base64.b64encode(images[c["name"]]).decode()
            img = f'<img alt="{e(c["name"])}" src="data:image/png;base64,{data}">'
        items = "".join(f"<li>{e(x)}</li>" for x in figure_lines(c["figures"]))
        sections.append(
            f'<section id="{e(c["name"])}"><h2>{e(c["name"])}</h2>'
            f'<p><em>{e(c["source"])}</em>: {e(c["statement"])}</p>'
            f'<p><b>Measured</b>: {e(c["measured"])}<br><b>Criterion</b>: {e(c["criterion"])}<br>'
            f'<b>Verdict</b>: <span class="{c["verdict"].replace(" ", "-")}">{e(c["verdict"])}</span>: '
            f'{e(c["explanation"])}</p><ul>{items}</ul>{img}</section>'
        )
    head = "".join(f"<th>{e(h)}</th>" for h in COLUMNS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>normlab: claims about batch normalization</title><style>{CSS}</style></head><body>"
        "<h1>normlab: claims about batch normalization, tested</h1>"
        f'<p class="about">{e(_about(doc))}</p>'
        f"<table><tr>{head}</tr>{''.join(rows)}</table>{''.join(sections)}</body></html>\n"
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
    for path in write(sys.argv[1] if len(sys.argv) > 1 else "normlab-report/results.json"):
        print(path)
