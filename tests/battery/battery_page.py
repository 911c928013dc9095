"""docs/battery.md: the battery's counts, per group and per outcome.

``python tests/battery/battery_page.py > docs/battery.md`` runs every case and writes what each gave;
``tests/battery/test_battery.py::test_docs_hold_the_counts`` checks that the page holds the outcomes the
cases expect (which every case's test asserts it gets), so the page is what a green battery gives.
"""

from __future__ import annotations

import functools
import pathlib
import sys
from collections import Counter

import torch

HERE = pathlib.Path(__file__).resolve().parent
PAGE = HERE.parent.parent / "docs" / "battery.md"
sys.path[:0] = [str(HERE), str(HERE.parent)]

import battery_lab  # noqa: E402
import battery_layers  # noqa: E402
import battery_tools  # noqa: E402

# what the reader must see at zero: every outcome that is a defect
DEFECTS = ("silent wrong answer", "NaN from finite input", "traceback for a user's mistake", "unclear error",
           "error where torch answers", "answer where torch raises")
GROUPS = {
    "layers": "every normlab layer kind x input kind x train / eval / momentum=None x default dispatch / "
              "normlab's backend; expected outcome from torch's layer on the same input (`battery_layers.py`)",
    "tools": "fold, precise, convert, freeze, sync, summary, doctor, param_groups x odd models (`battery_tools.py`)",
    "lab": "damaged data files through `load` and `normlab reproduce --data`; the lab's own runs: damaged cache "
           "files, workers killed, a full or read-only output folder (`battery_lab.py`)",
}


def all_cases() -> list:
    return battery_layers.layer_cases() + battery_tools.tool_cases() + battery_lab.lab_cases()


@functools.lru_cache(maxsize=1)
def expected_outcomes() -> list[tuple[str, str]]:
    """(group, outcome) of every case as declared: the layers' from torch's runs, the others' from their tables."""
    out = []
    for case in all_cases():
        if case.group == "layers":
            out.append((case.group, battery_layers.expect(case)[0]))
        elif case.group == "tools":
            out.append((case.group, battery_tools.expected(case)))
        else:
            out.append((case.group, battery_lab.expected(case)))
    return out


def actual_outcome(case) -> str:
    if case.group == "layers":
        expected, context = battery_layers.expect(case)
        return battery_layers.judge(case, expected, context)[0]
    if case.group == "tools":
        return battery_tools.run_tool(case)[0]
    return battery_lab.run_lab(case)[0]


TORCH = torch.__version__.split("+")[0]


def render(outcomes: list[tuple[str, str]]) -> str:
    counts = Counter(outcomes)
    groups = list(GROUPS)
    found = [o for o in dict.fromkeys(o for _, o in outcomes) if o not in DEFECTS]
    columns = found + [d for d in DEFECTS]
    known = [(k, v) for k, v in battery_layers.KNOWN_DEFECTS.items()]
    lines = [
        "# The battery: bad and odd cases",
        "",
        "<!-- Written by `python tests/battery/battery_page.py > docs/battery.md` from a run of every case; "
        "do not edit by hand. -->",
        "",
        f"{len(outcomes)} generated cases in `tests/battery/`, each with its outcome decided before normlab runs "
        "(from torch's own layer on the same input, or from what the model or the file is) and a test that "
        f"asserts it; counted with torch {TORCH} (another torch decides some outcomes otherwise, torch's own "
        "being the reference). The command line's battery is in [battery-cli.md](battery-cli.md).",
        "",
        *[f"- *{g}*: {why}" for g, why in GROUPS.items()],
        "",
        "| outcome | " + " | ".join(groups) + " | all |",
        "|---|" + "---|" * (len(groups) + 1),
        *[f"| {o} | " + " | ".join(str(counts[g, o]) for g in groups) + f" | {sum(counts[g, o] for g in groups)} |"
          for o in columns],
        "| cases | " + " | ".join(str(sum(counts[g, o] for o in columns)) for g in groups) + f" | {len(outcomes)} |",
        "",
        "Outcomes: *same as torch* (output, running statistics, batch count and gradients within the dtype's "
        "tolerance); *same error as torch* (torch's exception type, one line naming the layer); *guarded* (NaN or "
        "Inf in the input: torch's output, and the channels whose statistics came out non-finite keep their "
        "running values); *exact where torch is not* (a finite input on which torch's float32 answer is wrong: "
        "normlab gives the float64 one); *documented* (normlab differs from torch on purpose, each reason in "
        "`DOCUMENTED` of `battery_layers.py`; on a torch without `torch._fused_rms_norm`, among them RMS norm's "
        "default dispatch on huge inputs, as [layers](layers.md) says); the tools' and the lab's in their modules' "
        "docstrings.",
        "",
    ]
    if known:
        lines += ["Known defects, counted above and listed in the branch's status (each case expects the defect, "
                  "so its test fails once it is fixed):", ""]
        lines += [f"- {kind} | {what} | {backend or 'both backends'}: {outcome}: {why}"
                  for (kind, what, backend), (outcome, why) in known]
        lines += [""]
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    print(render([(case.group, actual_outcome(case)) for case in all_cases()]), end="")
