"""Where the lab's groups train and what survives faults: devices, executors, dead workers and drivers, damaged caches, full disks."""

import concurrent.futures as cf
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from normlab import cli as normlab_cli
from normlab._progress import Progress
from normlab.lab import executors, train
from normlab.lab import reproduce as rep
from normlab.lab.models import ModelSpec
from normlab.lab.train import DeviceError, RunConfig, resolve_device

CONFIGS = [RunConfig(ModelSpec("mlp", 1, 16, "relu", norm), steps=20, eval_every=10, seed=s) for norm in ("none", "bn") for s in (0, 1)]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where there is no GPU")


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "normlab", *args], capture_output=True, text=True, timeout=300, **kwargs)


def untimed(results):
    return {k: {n: v for n, v in r.items() if n not in ("seconds", "group_size")} for k, r in results.items()}


# --- devices --------------------------------------------------------------------------------------


@NO_CUDA
def test_devices_here():
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=f"device {name}: CUDA is not available here .*; use cpu or auto"):
            resolve_device(name)
    with pytest.raises(DeviceError, match="device must be one of cpu, cuda, auto, got 'tpu'"):
        resolve_device("tpu")


@NO_CUDA
def test_cuda_without_cuda_is_one_line(tmp_path):
    run = cli("reproduce", "--profile", "tiny", "--device", "cuda", "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.strip().count("\n") == 0
    assert run.stderr.startswith("normlab reproduce: device cuda: CUDA is not available here")
    assert not (tmp_path / "o" / "runs").exists()


def test_cluster_options_need_the_ray_executor(tmp_path):
    run = cli("reproduce", "--profile", "tiny", "--address", "auto", "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and run.stderr.strip() == "normlab reproduce: --address and --gpus-per-group go with --executor ray"


def test_the_device_reaches_the_model_and_the_data(monkeypatch, mnist1d):
    """``device`` goes from run_all through work to the group: its model, optimizer state and data live there."""
    seen = []

    class Spy(train._Group):
        def run(self, start):
            seen.append({
                "device": self.device,
                "net": {p.device for p in self.net.parameters()} | {b.device for b in self.net.buffers()},
                "members": {p.device for m in self.members for p in m.parameters()},
                "data": {self.x_train.device, self.y_train.device, self.ds.x_test.device, self.ds.y_test.device},
            })
            return super().run(start)

    monkeypatch.setattr(train, "_Group", Spy)
    results, fp = rep.work(CONFIGS[:2], "auto", mnist1d)
    here = resolve_device("auto")
    assert seen == [{"device": here, "net": {here}, "members": {here}, "data": {here}}]
    assert len(results) == 2 and all(r["fingerprint"] for r in results)
    assert ("device" in fp) == (here.type == "cuda")  # a GPU's name goes into the fingerprint; a CPU run's is as before


class _Reads(torch.overrides.TorchFunctionMode):
    """Counts what makes the host wait for a device: the lab's own reads of a tensor's values.

    The normlab layers' own guard on running statistics reads them on the CPU, where it
    costs nothing to wait, and decides on the device on a GPU (normlab.functional._Guard):
    only reads made by the lab's code (normlab/lab/) are counted."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu"}
    LAB = str(pathlib.Path(train.__file__).parent)

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS and sys._getframe(1).f_code.co_filename.startswith(self.LAB):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_training_waits_for_the_device_once_per_log_not_per_step(mnist1d):
    """Between two logs the lab reads nothing back: doubling the steps between logs leaves its reads as they
    were (one per log for the losses and the checks, the accuracies' and the probes' reads)."""
    counts = []
    for steps, every in ((20, 10), (80, 40)):
        configs = [c.but(steps=steps, eval_every=every) for c in CONFIGS[2:]]
        with _Reads() as reads:
            train.train_group(configs, mnist1d)
        counts.append(reads.count)
    assert counts[0] == counts[1] and counts[0] > 0


def test_a_replayed_interval_ends_a_diverging_member_as_a_checked_loop_would(mnist1d, monkeypatch):
    """A member that diverges mid-interval: the interval is replayed step by step; the member's end
    (step, reason, what is left) is its separate run's, and its group-mate is as without it."""
    spec = ModelSpec("mlp", 2, 16, "relu", "bn")
    calm = RunConfig(spec, lr=0.05, steps=30, eval_every=15, seed=0)
    wild = calm.but(model_init_scale=1e18)  # its batch statistics overflow at step 2
    replays = []
    checked = train._Group.checked
    monkeypatch.setattr(train._Group, "checked", lambda self, a, idx: replays.append(a) or checked(self, a, idx))
    group = train.train_group([calm, wild], mnist1d)
    assert replays == [0]  # the first interval, once; the second had nothing to check
    diverged = group[1]["diverged"]
    assert diverged["step"] == train.train_separately(wild, mnist1d)["diverged"]["step"] == 2
    assert "the batch statistics are not finite" in diverged["reason"]
    assert untimed({0: group[0]}) == untimed({0: train.train_group([calm], mnist1d)[0]})


# --- executors ----------------------------------------------------------------------------------------


def _kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def _pid():
    return os.getpid()


@pytest.mark.slow
def test_a_dead_worker_fails_its_task_only_and_is_replaced():
    with executors.WorkerPool(1) as pool:
        first = pool.submit(_pid).result(timeout=120)
        lost = pool.submit(_kill_myself)
        with pytest.raises(executors.WorkerLost, match=r"died \(killed by signal 9\)"):
            lost.result(timeout=120)
        again = pool.submit(_pid).result(timeout=120)
        assert again != first and pool.submit(divmod, 7, 2).result(timeout=60) == (3, 1)
        with pytest.raises(ZeroDivisionError):  # a task's own exception is the task's, not a lost worker
            pool.submit(divmod, 1, 0).result(timeout=60)


def _dies_once(configs, device="cpu", dataset=None):
    """rep.work, except that the first attempt of each group kills its worker."""
    marker = pathlib.Path(os.environ["NORMLAB_TEST_MARKERS"]) / configs[0].key()
    if not marker.exists():
        marker.touch()
        _kill_myself()
    return rep.work(configs, device, dataset)


def _always_dies(configs, device="cpu", dataset=None):
    if configs[0].model.norm == "bn":
        _kill_myself()
    return rep.work(configs, device, dataset)


@pytest.mark.slow
def test_lost_groups_are_retried_then_reported_failed(tmp_path, monkeypatch, capsys, mnist1d):
    serial, _, _ = rep.run_all(CONFIGS, tmp_path / "serial", jobs=1, progress=False)
    monkeypatch.setenv("NORMLAB_TEST_MARKERS", str(tmp_path))
    with executors.WorkerPool(2) as pool:
        monkeypatch.setattr(rep, "work", _dies_once)
        results, _, failed = rep.run_all(CONFIGS, tmp_path / "retried", executor=pool, progress=True)
        assert failed == {} and untimed(results) == untimed(serial)
        assert capsys.readouterr().err.count("was lost (worker process") == 2  # each group once, then it trained
        monkeypatch.setattr(rep, "work", _always_dies)
        results, _, failed = rep.run_all(CONFIGS, tmp_path / "failed", executor=pool, progress=False, retries=1)
    bn = {c.key() for c in CONFIGS if c.model.norm == "bn"}
    assert set(failed) == bn and set(results) == {c.key() for c in CONFIGS} - bn
    assert all("its worker died 2 times" in why for why in failed.values())
    assert "trying it again, attempt 2 of 2" in capsys.readouterr().err
    assert sorted(p.stem for p in (tmp_path / "failed" / "runs").glob("*.json")) == sorted(set(results))


def test_a_failed_claim_is_reported_not_judged(tmp_path, monkeypatch):
    from normlab.lab.claims import PROFILES

    monkeypatch.setattr(rep, "run_all", lambda configs, *a, **k: ({}, {}, {c.key(): "its worker died 3 times" for c in configs}))
    doc = rep.reproduce(["stable-distributions"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    (entry,) = doc["claims"]
    assert entry["verdict"] == "failed" and "could not be trained (its worker died 3 times)" in entry["explanation"]
    assert "**failed**" in (tmp_path / "report.md").read_text()


def test_a_rerun_with_another_executor_reuses_the_cache(tmp_path, mnist1d):
    first, _, _ = rep.run_all(CONFIGS, tmp_path, jobs=1, progress=False)

    class Refuses(cf.Executor):
        def submit(self, fn, /, *args, **kwargs):
            pytest.fail("a cached group was sent to the executor")

    assert rep.run_all(CONFIGS, tmp_path, executor=Refuses(), progress=False)[0] == first


def test_the_progress_bar_counts_groups_and_runs(tmp_path, capsys, mnist1d):
    rep.run_all(CONFIGS[:3], tmp_path, jobs=1, progress=True)
    err = capsys.readouterr().err
    assert "3 runs to train (0 already done), in 2 groups" in err
    assert "2/2 groups, 3/3 runs" in err


def test_progress_with_parts():
    import io

    stream = io.StringIO()
    bar = Progress(2, work=4.0, unit="groups", stream=stream, parts=30, part_unit="runs")
    bar.advance(1.0, 1, 20)
    assert stream.getvalue().splitlines()[-1].startswith("[#######.......................] 1/2 groups, 20/30 runs")


# --- the process tree dies with its driver -------------------------------------------------------


def _children(pid):
    out = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid):
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.slow
def test_workers_die_with_the_driver(tmp_path, sig):
    """`normlab reproduce` killed while its workers train: a few seconds later no worker is left."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "normlab", "reproduce", "--profile", "tiny", "--claims", "higher-learning-rates", "--jobs", "2",
         "--out", str(tmp_path / "o")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    workers = []
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
        time.sleep(0.2)
    time.sleep(3)  # importing torch, loading the data, training
    assert proc.poll() is None and len(workers) >= 2, "the workers never started"
    workers += [p for p in _children(proc.pid) if p not in workers]  # the resource tracker too
    proc.send_signal(sig)
    proc.wait()
    end = time.monotonic() + 5
    while any(_alive(p) for p in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "workers outlived their driver"


# --- damaged caches, unwritable folders -----------------------------------------------------------------

DAMAGE = {
    "not JSON": '{"config": {"trunc',
    "a list": "[]",
    "null": "null",
    "a number": "3",
    "no result": None,  # the config alone
    "no accuracy": "drop final_test_accuracy",
    "NaN accuracy": "nan final_test_accuracy",
    "NaN in the curve": "nan test_accuracy",
    "another config": "another config",
}


def damaged(good: dict, kind: str) -> str:
    """The text of a cache file holding the run ``good`` with the damage ``kind`` (:data:`DAMAGE`)."""
    damage = DAMAGE[kind]
    if kind in ("not JSON", "a list", "null", "a number"):
        return damage
    stored = json.loads(json.dumps(good))
    if damage is None:
        del stored["result"]
    elif damage == "another config":
        stored["config"]["lr"] = 0.5
    elif damage.startswith("drop "):
        del stored["result"][damage[5:]]
    elif damage.startswith("nan "):
        key = damage[4:]
        stored["result"][key] = float("nan") if key.startswith("final") else [*stored["result"][key][:-1], float("nan")]
    return json.dumps(stored)


def test_a_damaged_cache_file_is_moved_aside_and_retrained(tmp_path, capsys, mnist1d):
    config = CONFIGS[0]
    first, _, _ = rep.run_all([config], tmp_path, jobs=1, progress=False)
    path = tmp_path / "runs" / f"{config.key()}.json"
    good = json.loads(path.read_text())
    for kind in DAMAGE:
        text = damaged(good, kind)
        path.write_text(text)
        again, _, _ = rep.run_all([config], tmp_path, jobs=1, progress=False)
        err = capsys.readouterr().err
        assert untimed(again) == untimed(first), kind
        assert f"the cached run {path} is damaged (" in err and "moved to" in err and "it is trained again" in err, kind
        assert (tmp_path / "runs" / "damaged" / path.name).read_text() == text, kind
        assert json.loads(path.read_text())["result"]["final_test_accuracy"] == first[config.key()]["final_test_accuracy"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_an_unwritable_output_folder_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys, code):
    import normlab._atomic

    real = os.replace

    def refuse(src, dst):
        if pathlib.Path(dst).parent.name == "runs":
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(normlab._atomic.os, "replace", refuse)
    out = tmp_path / "o"
    with pytest.raises(rep.OutputError, match=f"cannot write {out / 'runs'}: {os.strerror(code)}"):
        rep.run_all(CONFIGS[:1], out, jobs=1, progress=False)
    assert list((out / "runs").iterdir()) == []  # neither a run nor a temporary file
    status = normlab_cli.main(["reproduce", "--profile", "tiny", "--claims", "stable-distributions", "--jobs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err  # above the one line: the progress bar
    assert err.strip().splitlines()[-1].startswith(f"normlab reproduce: cannot write {out / 'runs'}: {os.strerror(code)}")
    assert [p.name for p in (out / "runs").iterdir()] == [] and not (out / "results.json").exists()


def test_an_output_folder_without_write_permission_is_refused_before_any_training(tmp_path, monkeypatch, capsys):
    """(Root may write anywhere, so the permission is what os.access answers.) One line naming the folder,
    exit status 2, and nothing created or trained."""
    out = tmp_path / "o" / "report"
    monkeypatch.setattr(normlab_cli.os, "access", lambda path, mode: pathlib.Path(path) != tmp_path)
    status = normlab_cli.main(["reproduce", "--profile", "tiny", "--claims", "stable-distributions", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and err.strip() == f"normlab reproduce: --out {out}: {tmp_path} is not writable", err
    assert list(tmp_path.iterdir()) == []


def test_a_report_that_cannot_be_written_is_one_line_and_keeps_the_results(tmp_path, monkeypatch, capsys):
    from normlab.lab import report

    def full(results):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report, "write", full)
    out = tmp_path / "o"
    status = normlab_cli.main(["reproduce", "--profile", "tiny", "--claims", "stable-distributions", "--jobs", "1",
                               "--out", str(out)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and last.startswith(f"normlab reproduce: cannot write the report in {out}: No space left"), last
    assert "results.json is written" in last and json.loads((out / "results.json").read_text())["claims"]
    assert not (out / "report.html").exists()
