"""The command line's battery: every command x bad argument, each with its expected outcome.

Outcomes: ``error`` (one line on stderr naming what was wrong and what to do, exit status
2, no traceback), ``finding`` (the doctor's findings, exit status 1) and ``accepted``
(exit status 0: a checkpoint in a wrapper that is unwrapped). docs/battery-cli.md holds
the counts and the list; regenerate it with ``python tests/test_cli_battery.py > docs/battery-cli.md``.
"""

import pathlib
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass

import pytest

PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "battery-cli.md"

ZOO = textwrap.dedent(
    """
    import torch
    from torch import nn

    def mlp():
        return nn.Sequential(nn.Linear(20, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1))

    def cnn():
        return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 14 * 14, 10, bias=False), nn.BatchNorm1d(10))

    def boom():
        raise ValueError("no such width")

    def number():
        return 3

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()

        def forward(self, x):
            return self.body(x)[:, 5]  # a bug of the model's own: the output has one column

    def broken():
        return Broken()

    def no_stats():
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))

    def unpicklable():
        model = mlp()
        model.hook = lambda x: x  # torch.save cannot pickle a lambda
        return model
    """
)


@dataclass(frozen=True)
class Case:
    command: str
    argument: str  # what is wrong, in words
    argv: tuple[str, ...]
    outcome: str  # "error", "finding" or "accepted"
    says: tuple[str, ...] = ()  # words the error line (or, for a finding, the output) must hold

    @property
    def id(self) -> str:
        return f"{self.command}: {self.argument}"


def model_cases(command: str, rest: tuple[str, ...]) -> list[Case]:
    """What every command that takes MODEL [--checkpoint] can be given wrong."""
    c = lambda argument, argv, outcome, *says: Case(command, argument, (command, *argv), outcome, says)  # noqa: E731
    return [
        c("no MODEL", rest, "error", "required", "model"),
        c("MODEL without :callable", ("zoo", *rest), "error", "module:callable"),
        c("MODEL's module missing", ("nomodule:mlp", *rest), "error", "importing nomodule", "No module named 'nomodule'"),
        c("MODEL's .py file missing", ("missing.py:mlp", *rest), "error", "no such file: missing.py"),
        c("MODEL's module raises on import", ("bad_import.py:mlp", *rest), "error", "importing bad_import.py", "ZeroDivisionError", "line 1"),
        c("MODEL's callable missing", ("zoo.py:nothing", *rest), "error", "has no callable 'nothing'"),
        c("MODEL's factory raises", ("zoo.py:boom", *rest), "error", "calling zoo.py:boom", "ValueError: no such width", "zoo.py, line"),
        c("MODEL returns no module", ("zoo.py:number", *rest), "error", "returned int, expected a torch.nn.Module"),
        c("--checkpoint missing", ("zoo.py:mlp", "--checkpoint", "missing.pt", *rest), "error", "no such checkpoint: missing.pt"),
        c("--checkpoint is a folder", ("zoo.py:mlp", "--checkpoint", "folder", *rest), "error", "is a folder"),
        c("--checkpoint not a torch file", ("zoo.py:mlp", "--checkpoint", "garbage.pt", *rest), "error", "reading the checkpoint garbage.pt", "torch.save"),
        c("--checkpoint of other keys", ("zoo.py:mlp", "--checkpoint", "keys.pt", *rest), "error",
          "does not fit the model", "1 missing key(s) (3.bias)", "1 unexpected key(s) (head.weight)"),
        c("--checkpoint of other shapes", ("zoo.py:mlp", "--checkpoint", "shapes.pt", *rest), "error", "does not fit the model", "size mismatch"),
        c("--checkpoint holds a list", ("zoo.py:mlp", "--checkpoint", "list.pt", *rest), "error", "holds a list, not a state_dict"),
        c("--checkpoint holds no weights", ("zoo.py:mlp", "--checkpoint", "no_weights.pt", *rest), "error", "without tensors", "epoch"),
    ]  # fmt: skip


def wrapper_cases(command: str, rest: tuple[str, ...], outcome: str) -> list[Case]:
    """Checkpoints in the usual wrappers: unwrapped, then the command goes on."""
    return [
        Case(command, f"--checkpoint {what}", (command, "zoo.py:mlp", "--checkpoint", file, *rest), outcome)
        for what, file in (("from Lightning", "lightning.pt"), ("from DDP", "ddp.pt"), ("as {'model': ...}", "wrapped.pt"))
    ]


def command_cases() -> list[Case]:
    summary = ("--input-size", "20")
    doctor = ("--input-size", "20")
    fold = ("--output", "folded.pt")
    cases = model_cases("summary", summary) + wrapper_cases("summary", summary, "accepted")
    cases += model_cases("doctor", doctor) + wrapper_cases("doctor", ("--example", "batch.pt"), "accepted")
    cases += model_cases("fold", fold) + wrapper_cases("fold", fold, "accepted")
    c = lambda command, argument, argv, outcome, *says: Case(command, argument, (command, *argv), outcome, says)  # noqa: E731
    positive = "expected a positive integer"
    cases += [
        c("summary", "no --input-size", ("zoo.py:mlp",), "error", "required: --input-size"),
        c("summary", "--input-size 0", ("zoo.py:mlp", "--input-size", "0"), "error", "--input-size", positive, "'0'"),
        c("summary", "--input-size negative", ("zoo.py:mlp", "--input-size", "3", "-2"), "error", "--input-size"),
        c("summary", "--input-size not a number", ("zoo.py:mlp", "--input-size", "x"), "error", "--input-size", positive, "'x'"),
        c("summary", "--input-size that does not fit", ("zoo.py:mlp", "--input-size", "3"), "error",
          "running the model on a batch of shape (2, 3)", "mat1 and mat2", "one sample's shape"),
        c("summary", "--input-size of the wrong rank", ("zoo.py:cnn", "--input-size", "16", "16"), "error", "running the model", "one sample's shape"),
        c("summary", "an unknown option", ("zoo.py:mlp", "--input-size", "20", "--colour"), "error", "unrecognized arguments: --colour"),
        c("doctor", "neither --input-size nor --example", ("zoo.py:mlp",), "error", "one of the arguments --input-size --example is required"),
        c("doctor", "both --input-size and --example", ("zoo.py:mlp", "--input-size", "20", "--example", "batch.pt"), "error", "not allowed with"),
        c("doctor", "--batch-size 0", ("zoo.py:mlp", "--input-size", "20", "--batch-size", "0"), "error", "--batch-size", positive),
        c("doctor", "--batch-size negative", ("zoo.py:mlp", "--input-size", "20", "--batch-size", "-4"), "error", "--batch-size"),
        c("doctor", "--batch-size not a number", ("zoo.py:mlp", "--input-size", "20", "--batch-size", "many"), "error", "--batch-size", positive),
        c("doctor", "--batch-size with --example", ("zoo.py:mlp", "--example", "batch.pt", "--batch-size", "8"), "error", "has its own size"),
        c("doctor", "--batch-size 1: a batch of one", ("zoo.py:cnn", "--input-size", "3", "16", "16", "--batch-size", "1"), "finding",
          "[batch-of-one] 5:", "2 finding(s) on a batch of 1 standard-normal samples"),
        c("doctor", "--input-size that does not fit", ("zoo.py:mlp", "--input-size", "3"), "error",
          "cannot run on a batch of 32 standard-normal samples of shape (3,)", "in 0", "mat1 and mat2", "one sample's shape"),
        c("doctor", "a model whose forward raises", ("zoo.py:broken", "--input-size", "20"), "error", "in (model)", "IndexError"),
        c("doctor", "--example missing", ("zoo.py:mlp", "--example", "missing.pt"), "error", "no such example batch: missing.pt"),
        c("doctor", "--example not a torch file", ("zoo.py:mlp", "--example", "garbage.pt"), "error", "reading the example batch garbage.pt"),
        c("doctor", "--example a dict", ("zoo.py:mlp", "--example", "dict.pt"), "error", "is a dict (keys: image, label)", "torch.save(batch['x'], path)"),
        c("doctor", "--example a number", ("zoo.py:mlp", "--example", "number.pt"), "error", "holds an int"),
        c("doctor", "--example without samples", ("zoo.py:mlp", "--example", "empty.pt"), "error", "holds no samples"),
        c("doctor", "--example of the wrong shape", ("zoo.py:mlp", "--example", "images.pt"), "error", "cannot run on the example batch in images.pt"),
        c("doctor", "--example a tuple (inputs, targets)", ("zoo.py:mlp", "--example", "tuple.pt"), "accepted"),
        c("doctor", "--example of one sample", ("zoo.py:mlp", "--example", "one.pt"), "finding", "[batch-of-one] 1:"),
        c("fold", "no --output", ("zoo.py:mlp",), "error", "required: --output"),
        c("fold", "--output a folder", ("zoo.py:mlp", "--output", "folder"), "error", "--output folder is a folder"),
        c("fold", "--output in a missing folder", ("zoo.py:mlp", "--output", "nowhere/folded.pt"), "error", "the folder nowhere does not exist"),
        c("fold", "--output under a file", ("zoo.py:mlp", "--output", "garbage.pt/folded.pt"), "error", "garbage.pt is a file"),
        c("fold", "a model that cannot be folded", ("zoo.py:no_stats", "--output", "folded.pt"), "error", "keep no running statistics"),
        c("fold", "a model torch.save cannot write", ("zoo.py:unpicklable", "--output", "folded.pt"), "error", "cannot write folded.pt (left as it was)"),
        c("reproduce", "--jobs 0", ("--jobs", "0"), "error", "--jobs", positive),
        c("reproduce", "--jobs negative", ("--jobs", "-2"), "error", "--jobs"),
        c("reproduce", "--jobs not a number", ("--jobs", "all"), "error", "--jobs", positive),
        c("reproduce", "--seeds 0", ("--seeds", "0"), "error", "--seeds", positive),
        c("reproduce", "--out a file", ("--out", "garbage.pt"), "error", "--out garbage.pt is a file", "give a folder"),
        c("reproduce", "--out under a file", ("--out", "garbage.pt/report"), "error", "garbage.pt is a file"),
        c("reproduce", "--claims unknown", ("--claims", "magic"), "error", "unknown claim(s) magic", "faster-training"),
        c("reproduce", "--profile unknown", ("--profile", "huge"), "error", "invalid choice: 'huge'"),
        c("reproduce", "--data a missing folder", ("--data", "nowhere"), "error", "no such dataset folder: nowhere"),
        c("reproduce", "an unknown option", ("--fast",), "error", "unrecognized arguments: --fast"),
        c("claims", "an extra argument", ("all",), "error", "unrecognized arguments: all"),
        Case("normlab", "no command", (), "error", ("required: COMMAND",)),
        Case("normlab", "an unknown command", ("train",), "error", ("invalid choice: 'train'",)),
    ]  # fmt: skip
    return cases


CASES = command_cases()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder as a user has it: a model file, checkpoints and example batches, good and bad."""
    import torch

    root = tmp_path_factory.mktemp("battery")
    (root / "zoo.py").write_text(ZOO)
    (root / "bad_import.py").write_text("1 / 0\n")
    (root / "folder").mkdir()
    (root / "garbage.pt").write_text("not a checkpoint")
    from torch import nn

    mlp = nn.Sequential(nn.Linear(20, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1))
    state = mlp.state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 30}, root / "lightning.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, root / "ddp.pt")
    torch.save({"model": state, "optimizer": {}, "epoch": 3}, root / "wrapped.pt")
    keys = dict(state)
    keys["head.weight"] = keys.pop("3.bias")
    torch.save(keys, root / "keys.pt")
    torch.save(nn.Sequential(nn.Linear(20, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1)).state_dict(), root / "shapes.pt")
    torch.save([state], root / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, root / "no_weights.pt")
    gen = torch.Generator().manual_seed(0)
    torch.save(torch.randn(32, 20, generator=gen), root / "batch.pt")
    torch.save((torch.randn(32, 20, generator=gen), torch.zeros(32)), root / "tuple.pt")
    torch.save({"image": torch.randn(32, 20, generator=gen), "label": torch.zeros(32)}, root / "dict.pt")
    torch.save(3, root / "number.pt")
    torch.save(torch.zeros(0, 20), root / "empty.pt")
    torch.save(torch.randn(1, 20, generator=gen), root / "one.pt")
    torch.save(torch.randn(32, 3, 8, 8, generator=gen), root / "images.pt")
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, workspace, monkeypatch, capsys):
    from normlab.cli import main

    monkeypatch.chdir(workspace)
    monkeypatch.syspath_prepend(str(workspace))
    try:
        status = main(list(case.argv))
    finally:
        for name in ("zoo", "bad_import"):
            sys.modules.pop(name, None)
    assert not list(workspace.glob(".*.tmp")), "a half-written file was left behind"
    out, err = capsys.readouterr()
    expected = {"error": 2, "finding": 1, "accepted": 0}[case.outcome]
    assert status == expected, f"{case.id}: status {status}, expected {expected}\n{out}\n{err}"
    if case.outcome == "error":
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        prog = "normlab" if case.command == "normlab" else f"normlab {case.command}"
        assert lines[0].startswith(f"{prog}: "), lines[0]
        for words in case.says:
            assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    else:
        assert "Traceback" not in err
        for words in case.says:
            assert words in out, f"{words!r} not in {out!r}"


def test_the_real_command_prints_one_line(workspace):
    """The same contract through the installed entry point, in a process of its own."""
    import subprocess

    for argv in (("summary", "zoo.py:boom", "--input-size", "3"), ("reproduce", "--jobs", "0")):
        out = subprocess.run([sys.executable, "-m", "normlab", *argv], cwd=workspace, capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def render(cases=CASES) -> str:
    """The section of docs/battery-cli.md: counts per command and outcome, then every case."""
    outcomes = ("error", "finding", "accepted")
    counts = Counter((c.command, c.outcome) for c in cases)
    commands = list(dict.fromkeys(c.command for c in cases))
    lines = [
        "## Command line",
        "",
        "<!-- Written by `python tests/test_cli_battery.py > docs/battery-cli.md`; do not edit by hand. -->",
        "",
        f"{len(cases)} cases, each a test in `tests/test_cli_battery.py`: every command given each kind of bad",
        "argument a user can give it. *error*: one line on stderr, `normlab COMMAND: ...`, naming what was wrong",
        "and what to do, exit status 2, no traceback; *finding*: the doctor's findings, exit status 1;",
        "*accepted*: exit status 0 (a checkpoint in a Lightning, DDP or `{'model': ...}` wrapper is unwrapped).",
        "",
        "| command | " + " | ".join(outcomes) + " | cases |",
        "|---|" + "---|" * (len(outcomes) + 1),
        *(f"| `{cmd}` | " + " | ".join(str(counts[cmd, o]) for o in outcomes) + f" | {sum(counts[cmd, o] for o in outcomes)} |" for cmd in commands),
        "| all | " + " | ".join(str(sum(counts[cmd, o] for cmd in commands)) for o in outcomes) + f" | {len(cases)} |",
        "",
    ]
    for cmd in commands:
        lines += [f"- `{cmd}`: " + "; ".join(f"{c.argument} ({c.outcome})" for c in cases if c.command == cmd)]
    return "\n".join(lines) + "\n"


def test_docs_hold_the_counts():
    assert PAGE.read_text() == render(), "regenerate: python tests/test_cli_battery.py > docs/battery-cli.md"


if __name__ == "__main__":
    print(render(), end="")
