"""`normlab reproduce` end to end: cached runs, resuming after a kill, the report from results.json alone, the CLI."""

import io
import json
import signal
import subprocess
import sys
import time

import pytest
from dataset_files import write_cifar_batch, write_mnist

from normlab._progress import Progress
from normlab.lab import reproduce as rep
from normlab.lab import report
from normlab.lab.claims import CLAIMS, PROFILES
from normlab.lab.fingerprint import fingerprint, fingerprint_id
from normlab.lab.models import ModelSpec
from normlab.lab.train import RunConfig

CONFIGS = [RunConfig(ModelSpec("mlp", 1, 16, "relu", norm), steps=20, eval_every=10, seed=s) for norm in ("none", "bn") for s in (0, 1)]


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "normlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def without_timing(doc):
    """results.json with what legitimately differs between two runs (wall-clock times) removed."""
    doc = json.loads(json.dumps(doc))
    for key in ("created", "seconds", "trained"):
        doc.pop(key, None)
    for r in doc["runs"].values():
        r["result"].pop("seconds")
        r["result"].pop("group_size")  # a resumed run may train in a smaller group: the same numbers
    return doc


def test_runs_are_cached_by_config(tmp_path, monkeypatch, mnist1d):
    first, fingerprints, failed = rep.run_all(CONFIGS, tmp_path, jobs=1, progress=False)
    assert sorted(p.stem for p in (tmp_path / "runs").glob("*.json")) == sorted(c.key() for c in CONFIGS)
    here = fingerprint_id(fingerprint())
    assert set(fingerprints) == {here} and all(r["fingerprint"] == here for r in first.values()) and failed == {}
    monkeypatch.setattr(rep, "train_group", lambda *a, **k: pytest.fail("a cached run was trained again"))
    assert rep.run_all(CONFIGS + CONFIGS[:1], tmp_path, jobs=1, progress=False) == (first, fingerprints, {})


def test_a_damaged_cache_entry_is_trained_again(tmp_path, mnist1d):
    first, _, _ = rep.run_all(CONFIGS[:2], tmp_path, jobs=1, progress=False)
    (tmp_path / "runs" / f"{CONFIGS[0].key()}.json").write_text('{"config": {"trunc')
    again, _, _ = rep.run_all(CONFIGS[:2], tmp_path, jobs=1, progress=False)
    # the same numbers, though the damaged run now trained alone and the other one in a group of two
    assert {k: {**v, "seconds": 0, "group_size": 0} for k, v in again.items()} == {k: {**v, "seconds": 0, "group_size": 0} for k, v in first.items()}


def test_progress_bar_in_a_log():
    stream = io.StringIO()
    bar = Progress(2, work=10.0, unit="runs", stream=stream)
    bar.advance(4.0)
    bar.advance(6.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[############..................] 1/2 runs") and "left" in lines[0]
    assert lines[-1].startswith("[##############################] 2/2 runs") and len(lines) == 2


def test_the_report_says_how_many_runs_came_from_the_cache(tmp_path, mnist1d):
    doc = rep.reproduce(["stable-distributions"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    assert doc["trained"] == len(doc["runs"]) == 4
    assert "from the cache" not in (tmp_path / "report.md").read_text()  # all trained now: the clock is the profile's
    victim = next(iter((tmp_path / "runs").glob("*.json")))
    victim.unlink()
    doc = rep.reproduce(["stable-distributions"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    assert doc["trained"] == 1 and (tmp_path / "runs" / victim.name).exists()
    assert "s, training 1 of its 4 runs (the others from the cache);" in (tmp_path / "report.md").read_text()


def test_report_is_rebuilt_from_results_json_alone(tmp_path, mnist1d):
    rep.reproduce(["stable-distributions"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    md = (tmp_path / "report.md").read_text()
    for p in (tmp_path / "runs").glob("*.json"):
        p.unlink()
    (tmp_path / "report.md").unlink()
    report.write(tmp_path / "results.json")
    assert (tmp_path / "report.md").read_text() == md
    assert md.startswith("# normlab") and "| claim | source | measured | criterion |" in md


@pytest.mark.slow
def test_resume_after_a_kill(tmp_path):
    """Kill `reproduce` mid-way, run it again: it trains only what is missing and ends with the same numbers."""
    args = ("reproduce", "--profile", "tiny", "--claims", "higher-learning-rates", "--jobs", "1")
    clean = cli(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    total = len(list((tmp_path / "clean" / "runs").glob("*.json")))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "normlab", *args, "--out", str(out)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / "runs").glob("*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "runs").glob("*.json")))
    assert 3 <= done < total and not (out / "results.json").exists(), "the kill came too late to test anything"

    resumed = cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total - done} runs to train ({done} already done)" in resumed.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "clean", out))
    assert without_timing(a) == without_timing(b)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    """Three claims on the tiny profile through the command line, two worker processes: the table, the
    report, results.json. (Every claim runs on the tiny profile in test_claims.py, each in a test of its own.)"""
    out = tmp_path / "report"
    claims = ["ghost-batches", "small-batches", "regularization"]
    run = cli("reproduce", "--profile", "tiny", "--claims", *claims, "--out", str(out), "--jobs", "2", timeout=1200)
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split(None, 1)[1] for line in run.stdout.splitlines() if line.split() and line.split()[0] in CLAIMS}
    assert set(rows) == set(claims), run.stdout
    assert all(row.startswith(("reproduced", "not reproduced", "inconclusive")) and row.endswith("round 1 of 1") for row in rows.values())
    assert "Smoke test: the tiny profile" in run.stdout and "Its verdicts mean nothing" in run.stdout
    assert "runs to train" in run.stderr and "2 at a time" in run.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["profile"] == {"name": "tiny", "rounds": [2], "data": "mnist1d", "seed_offset": 0}
    assert doc["versions"]["torch"] and doc["versions"]["mnist1d"] and sorted(c["name"] for c in doc["claims"]) == sorted(claims)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(claims)
    assert not any(tag in html for tag in ('src="http', "<link", "<script")), "the page loads nothing from outside"
    assert html.index('class="smoke"') < html.index('class="headline"') < html.index("<h2>Every claim")
    assert '<section id="references">' in html and "Ioffe, S., &amp; Szegedy, C. (2015)" in html
    for c in doc["claims"]:
        assert c["criterion"] in html.replace("&#x27;", "'") and f'class="{c["verdict"].replace(" ", "-")}"' in html
    md = (out / "report.md").read_text()
    assert all(f"(plots/{c['name']}.png)" in md for c in doc["claims"])
    again = cli("reproduce", "--profile", "tiny", "--claims", *claims, "--out", str(out), "--jobs", "2")  # all cached
    assert again.returncode == 0 and "runs to train" not in again.stderr


def test_claims_command():
    run = cli("claims")
    assert run.returncode == 0
    for name in CLAIMS:
        assert f"{name}\n  source:" in run.stdout


@pytest.mark.slow
def test_cli_errors(tmp_path):
    run = cli("reproduce", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "no such dataset folder" in run.stderr and "nowhere" in run.stderr
    run = cli("reproduce", "--claims", "faster-flying")
    assert run.returncode == 2 and "unknown claim(s) faster-flying; the claims are: faster-training," in run.stderr
    run = cli("reproduce", "--seeds", "0", "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "argument --seeds: expected a positive integer" in run.stderr
    run = cli("reproduce", "--seed-offset", "-1", "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "argument --seed-offset: expected a non-negative integer" in run.stderr


# --- claims that cannot run on the data are skipped, with their reason -------------------------


def test_claims_whose_networks_do_not_fit_the_data_are_planned_out():
    from normlab.lab import data
    from normlab.lab.claims import Profile

    digits = data.load("digits")  # (1, 8, 8) images, 1259 training samples
    planned, skipped = rep.plan(list(CLAIMS.values()), Profile("quick", (3,), "digits"))
    assert sorted(skipped) == ["recurrent", "saturating-activations"]
    assert "an rnn reads samples of shape (C, L) as L steps of C values, got (1, 8, 8)" in skipped["recurrent"]
    assert "5 blocks (4 poolings) pool samples of shape (1, 8, 8) to nothing" in skipped["saturating-activations"]
    assert set(planned) == set(CLAIMS) - set(skipped)
    assert all(c.misfit(digits) is None for runs in planned.values() for c in runs)
    _, skipped = rep.plan(list(CLAIMS.values()), Profile("full", (5,), "digits"))
    assert "train_subset 2000 exceeds the 1259 training samples" in skipped["small-batches"]


@pytest.mark.slow
def test_reproduce_on_an_image_folder_skips_what_cannot_run(tmp_path):
    """`reproduce --data FOLDER`: the recurrent and the 5-block CNN claims cannot run on 6x6 images; they
    are skipped, said so on stderr, in the terminal's table and in the report, and the others run."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_mnist(folder, n_train=100, n_test=20)
    out = tmp_path / "report"
    claims = ("faster-training", "recurrent", "saturating-activations")
    run = cli("reproduce", "--profile", "tiny", "--data", str(folder), "--claims", *claims, "--out", str(out), "--jobs", "1")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "skipping recurrent: its networks cannot train on" in run.stderr and "an rnn reads samples" in run.stderr
    assert "skipping saturating-activations:" in run.stderr and "pool samples of shape (1, 6, 6) to nothing" in run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.split() and line.split()[0] in claims}
    assert lines["recurrent"].split(None, 1)[1].startswith("skipped: its networks cannot train on this data: ModelSpec: an rnn")
    assert lines["faster-training"].split(None, 1)[1].startswith(("reproduced", "inconclusive", "not reproduced"))
    doc = json.loads((out / "results.json").read_text())
    verdicts = {c["name"]: c for c in doc["claims"]}
    assert verdicts["saturating-activations"]["verdict"] == "skipped" and verdicts["saturating-activations"]["runs"] == []
    assert all(r["config"]["model"]["kind"] == "mlp" for r in doc["runs"].values())  # only faster-training's were trained
    md = (out / "report.md").read_text()
    assert "**skipped**: its networks cannot train on this data: ModelSpec: an rnn reads" in md
    headline, row = [line for line in md.splitlines() if line.startswith("| [recurrent]")]  # the headline's, the table's
    assert "| **skipped** | its networks cannot train on this data" in headline
    assert "| its networks cannot train on this data: ModelSpec: an rnn reads" in row and row.endswith("| **skipped** |")
    assert "(plots/faster-training.png)" in md and "plots/recurrent.png" not in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and 'class="skipped"' in html


@pytest.mark.slow
def test_a_bad_data_folder_is_one_line_naming_the_file(tmp_path):
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", 4, seed=i)
    write_cifar_batch(tmp_path / "test_batch", 3, labels=[1, 10**6, 2])  # a million-class model, before
    run = cli("reproduce", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and "test_batch: labels must lie in 0..9" in run.stderr


# --- rounds of seeds, seed offsets, fingerprints -----------------------------------------------------


def fake_claim(name, width, values):
    """A claim over tiny runs (one per seed) whose figure is ``values(seed)`` per run, compared with 0."""
    from normlab.lab import plots, stats
    from normlab.lab.claims.base import Claim

    def runs(profile):
        return [RunConfig(ModelSpec("mlp", 1, width, "relu"), steps=2, eval_every=2, seed=s) for s in profile.seeds]

    return Claim(
        name, "a test", "values are positive", "the seeds", "mean above 0",
        runs=runs,
        summarize=lambda rs: {"x": stats.stat([values(r.config.seed) for r in rs])},
        parts=lambda f: [stats.compare(f["x"], 0.0, what="x", smallest=0.1)],
        plot=lambda rs, f: plots.figure()[0],
    )


def test_rounds_add_seeds_until_the_verdict_is_decisive(tmp_path, monkeypatch, mnist1d):
    from normlab.lab.claims.base import Profile

    slow = fake_claim("slow", 7, lambda s: float(s % 3))  # mean 1, spread 0.8: decided only with many seeds
    fast = fake_claim("fast", 9, lambda s: 5.0 + 0.01 * s)
    monkeypatch.setitem(CLAIMS, "slow", slow)
    monkeypatch.setitem(CLAIMS, "fast", fast)
    profile = Profile("tiny", (2, 6, 12))
    doc = rep.reproduce(["slow", "fast"], profile, tmp_path, jobs=1, progress=False)
    by = {c["name"]: c for c in doc["claims"]}
    assert (by["fast"]["verdict"], by["fast"]["look"], by["fast"]["seeds"]) == ("reproduced", 1, 2)
    assert (by["slow"]["verdict"], by["slow"]["look"], by["slow"]["seeds"]) == ("reproduced", 3, 12)
    assert by["slow"]["parts"][0]["n"] == [12, None] and by["slow"]["looks"] == 3
    trained = {json.loads(p.read_text())["config"]["model"]["width"] for p in (tmp_path / "runs").glob("*.json")}
    assert len(list((tmp_path / "runs").glob("*.json"))) == 12 + 2 and trained == {7, 9}
    # another seed set: disjoint seeds, nothing reused
    other = rep.reproduce(["fast"], Profile("tiny", (2,), seed_offset=100), tmp_path, jobs=1, progress=False)
    assert {r["config"]["seed"] for r in other["runs"].values()} == {100, 101}
    assert other["profile"]["seed_offset"] == 100
    side_by_side = report.compare([doc, other], ["seeds 0-", "seeds 100-"])
    assert "| fast | reproduced (2 seeds) | reproduced (2 seeds) | yes |" in side_by_side
    assert "| slow | reproduced (12 seeds) | - | **no** |" in side_by_side


def test_a_report_says_when_runs_come_from_another_machine(tmp_path, monkeypatch, mnist1d):
    monkeypatch.setitem(CLAIMS, "fast", fake_claim("fast", 9, lambda s: 5.0 + 0.01 * s))
    doc = rep.reproduce(["fast"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    fp = doc["fingerprint"]
    assert fp["torch_cpu_capability"] and fp["cpu"] and fp["threads"] == 1 and "mkl" in fp and "onednn" in fp
    assert "Note." not in (tmp_path / "report.md").read_text()
    # one cached run as if trained elsewhere: the report is rebuilt from the cache and says so
    path = next((tmp_path / "runs").glob("*.json"))
    stored = json.loads(path.read_text())
    stored["fingerprint"] = {**stored["fingerprint"], "cpu": "Another CPU", "torch_cpu_capability": "AVX512"}
    stored["result"]["fingerprint"] = fingerprint_id(stored["fingerprint"])
    path.write_text(json.dumps(stored))
    rep.reproduce(["fast"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    md = (tmp_path / "report.md").read_text()
    assert "**Note.** 1 of 2 runs were trained on another machine or software setup" in md and "Another CPU, AVX512" in md
