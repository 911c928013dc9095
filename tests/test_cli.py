"""The command line, end to end: a model file and a checkpoint on disk, as a user has them."""

import subprocess
import sys
import textwrap
from importlib import metadata

import pytest
import torch
from conftest import assert_rel
from torch import nn

import normlab
from normlab.cli import main

MODEL = textwrap.dedent(
    """
    from torch import nn
    import normlab

    def mlp():
        return nn.Sequential(nn.Linear(20, 64), normlab.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1))
    """
)


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "normlab", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_summary_of_a_model_file_with_checkpoint(tmp_path):
    (tmp_path / "zoo.py").write_text(MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import zoo

        model = zoo.mlp()
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    out = run("summary", "zoo:mlp", "--checkpoint", "ckpt.pt", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Total params: 1,665" in out.stdout and "Trainable params: 1,537" in out.stdout and "(None, 64)" in out.stdout
    out = run("summary", "zoo.py:mlp", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 0 and "Non-trainable params: 128" in out.stdout


@pytest.mark.slow
def test_clear_errors(tmp_path):
    (tmp_path / "zoo.py").write_text(MODEL)
    out = run("summary", "zoo", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 2 and "module:callable" in out.stderr
    out = run("summary", "zoo:nothing", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 2 and "has no callable 'nothing'" in out.stderr
    out = run("summary", "zoo:mlp", "--checkpoint", "missing.pt", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 2 and "no such checkpoint: missing.pt" in out.stderr


FOLD_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    import normlab

    class Net(nn.Module):  # a class of its own, so the saved module needs this file importable
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, bias=False)
            self.bn = normlab.BatchNorm2d(8)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 4), nn.BatchNorm1d(4))

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return self.head(y)

    def net():
        return Net()

    def leaky():
        return nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.BatchNorm1d(6, momentum=0.99))

    def no_stats():
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    """
)


def trained_checkpoint(tmp_path, name):
    """The model file on disk and a checkpoint holding real running statistics, as after training."""
    (tmp_path / "fold_zoo.py").write_text(FOLD_MODEL)
    sys.path.insert(0, str(tmp_path))
    try:
        import fold_zoo

        model = getattr(fold_zoo, name)()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fold_zoo", None)
    gen = torch.Generator().manual_seed(0)
    normlab.precise_batchnorm(model, [torch.randn(16, 3, 6, 6, generator=gen) * 3 + 2 for _ in range(3)])
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    return model.eval()


def test_fold_writes_a_folded_model(tmp_path):
    model = trained_checkpoint(tmp_path, "net")
    (tmp_path / "folded.pt").write_bytes(b"an older file, replaced whole")
    out = run("fold", "fold_zoo.py:net", "--checkpoint", "ckpt.pt", "--output", "folded.pt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "conv <- bn" in out.stdout and "head.1 <- head.2" in out.stdout and "wrote folded.pt" in out.stdout
    sys.path.insert(0, str(tmp_path))
    try:
        folded = torch.load(tmp_path / "folded.pt", weights_only=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fold_zoo", None)
    assert not any("BatchNorm" in type(m).__name__ for m in folded.modules())
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        assert_rel(folded(x), model(x), 1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["ckpt.pt", "fold_zoo.py", "folded.pt"]


def test_fold_never_leaves_a_half_written_file(tmp_path, monkeypatch, capsys):
    trained_checkpoint(tmp_path, "net")
    (tmp_path / "folded.pt").write_bytes(b"the previous folded model")

    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    args = ["fold", "fold_zoo.py:net", "--checkpoint", "ckpt.pt", "--output", "folded.pt"]
    assert in_process(args, tmp_path, monkeypatch) == 2
    assert "cannot write folded.pt (left as it was): No space left on device" in capsys.readouterr().err
    assert (tmp_path / "folded.pt").read_bytes() == b"the previous folded model"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["ckpt.pt", "fold_zoo.py", "folded.pt"]


def in_process(args, tmp_path, monkeypatch):
    """``normlab ARGS`` run in this process (quicker than a new interpreter): status."""
    monkeypatch.chdir(tmp_path)
    try:
        return main(args)
    finally:
        sys.modules.pop("fold_zoo", None)


def test_fold_clear_errors(tmp_path, monkeypatch, capsys):
    (tmp_path / "fold_zoo.py").write_text(FOLD_MODEL)
    assert in_process(["fold", "fold_zoo.py:no_stats", "--output", "folded.pt"], tmp_path, monkeypatch) == 2
    assert "normlab fold: fold_batchnorm: 1 (BatchNorm2d(4)) keep no running statistics" in capsys.readouterr().err
    assert not (tmp_path / "folded.pt").exists()


def test_doctor(tmp_path, monkeypatch, capsys):
    trained_checkpoint(tmp_path, "net")
    out = run("doctor", "fold_zoo.py:net", "--checkpoint", "ckpt.pt", "--input-size", "3", "6", "6", cwd=tmp_path)
    # the checkpoint's statistics are those of 3 * N(0, 1) + 2 inputs, the doctor's batch is N(0, 1)
    assert out.returncode == 1, out.stderr
    assert "[stats-mismatch] bn:" in out.stdout and "[bias-before-bn] head.1:" in out.stdout
    batch = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 3 + 2
    torch.save(batch, tmp_path / "batch.pt")
    args = ["doctor", "fold_zoo.py:net", "--checkpoint", "ckpt.pt", "--example", "batch.pt"]
    assert in_process(args, tmp_path, monkeypatch) == 1
    out = capsys.readouterr().out
    assert "stats-mismatch" not in out and "bias-before-bn" in out
    args = ["doctor", "fold_zoo.py:leaky", "--input-size", "6", "--batch-size", "4"]
    assert in_process(args, tmp_path, monkeypatch) == 1
    out = capsys.readouterr().out
    for code in ("keras-momentum", "bn-after-dropout", "small-batch"):
        assert f"[{code}] " in out, out
    assert "3 finding(s) on a batch of 4 standard-normal samples of shape (6,)" in out


def test_checkpoint_wrappers_are_unwrapped(tmp_path, capsys):
    from normlab.cli import CommandError, load_checkpoint

    trained = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    normlab.precise_batchnorm(trained, [torch.randn(16, 4) * 2 + 1])
    state = trained.state_dict()
    wrapped = {
        "lightning.pt": {"state_dict": {f"model.{k}": v for k, v in state.items()} | {"loss.weight": torch.ones(1)}, "epoch": 3},
        "ddp.pt": {f"module.{k}": v for k, v in state.items()},
        "compiled_ddp.pt": {f"module._orig_mod.{k}": v for k, v in state.items()},
        "model.pt": {"model": state, "optimizer": {"state": {}}, "epoch": 3},
        "module.pt": trained,
        "plain.pt": state,
    }
    for name, obj in wrapped.items():
        torch.save(obj, tmp_path / name)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        load_checkpoint(model, str(tmp_path / name))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), name
    notes = capsys.readouterr().err
    assert "lightning.pt: its 'state_dict' entry, prefix 'model.' removed (1 other entries left out: loss.weight)" in notes
    assert "ddp.pt: prefix 'module.' removed" in notes and "prefix 'module._orig_mod.' removed" in notes
    assert "plain.pt" not in notes  # nothing to say
    torch.save({k: v for k, v in state.items() if "running" not in k}, tmp_path / "partial.pt")
    with pytest.raises(CommandError, match=r"partial.pt does not fit the model: 2 missing key\(s\) \(1.running_mean, 1.running_var\)"):
        load_checkpoint(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), str(tmp_path / "partial.pt"))


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    torch_version = metadata.version("torch")  # as installed: torch.__version__ may add a local label (+cpu)
    assert capsys.readouterr().out.strip() == f"normlab {normlab.__version__} (torch {torch_version}, Python {sys.version.split()[0]})"
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--help"])
    assert e.value.code == 0 and "--batch-size" in capsys.readouterr().out


def test_doctor_exit_status(tmp_path, monkeypatch, capsys):
    (tmp_path / "fold_zoo.py").write_text(FOLD_MODEL)
    clean = textwrap.dedent(
        """
        from torch import nn

        def clean():
            return nn.Sequential(nn.Linear(6, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU())
        """
    )
    (tmp_path / "clean_zoo.py").write_text(clean)
    assert in_process(["doctor", "clean_zoo.py:clean", "--input-size", "6"], tmp_path, monkeypatch) == 0
    assert "0 finding(s) on a batch of 32" in capsys.readouterr().out
    assert in_process(["doctor", "fold_zoo.py:leaky", "--input-size", "6"], tmp_path, monkeypatch) == 1
    assert in_process(["doctor", "fold_zoo.py:leaky", "--input-size", "7"], tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("normlab doctor: the model cannot run on") and len(err.strip().splitlines()) == 1


def test_a_bug_of_normlabs_is_not_a_finding(tmp_path, monkeypatch, capsys):
    """Exit status 1 means findings; a crash inside normlab has a status of its own, and its traceback."""
    (tmp_path / "fold_zoo.py").write_text(FOLD_MODEL)

    def broken_doctor(model, batch):
        raise AttributeError("'NoneType' object has no attribute 'running_mean'")

    monkeypatch.setattr(normlab.tools, "doctor", broken_doctor)
    assert in_process(["doctor", "fold_zoo.py:leaky", "--input-size", "6"], tmp_path, monkeypatch) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "AttributeError" in err and "this is a bug in normlab (exit status 3)" in err
