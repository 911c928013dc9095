"""The command line, end to end: a model file and a checkpoint on disk, as a user has them."""

import subprocess
import sys
import textwrap

import torch

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


def test_clear_errors(tmp_path):
    (tmp_path / "zoo.py").write_text(MODEL)
    out = run("summary", "zoo", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 2 and "module:callable" in out.stderr
    out = run("summary", "zoo:nothing", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 2 and "has no callable 'nothing'" in out.stderr
    out = run("summary", "zoo:mlp", "--checkpoint", "missing.pt", "--input-size", "20", cwd=tmp_path)
    assert out.returncode == 2 and "no such checkpoint: missing.pt" in out.stderr
