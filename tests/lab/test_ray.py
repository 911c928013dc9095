"""The lab on Ray: a local cluster of two CPUs gives the numbers the local worker pool gives, retries lost tasks, checks devices."""

import functools
import json
import os
import signal
import sys

import pytest

ray = pytest.importorskip("ray")

from normlab.lab import executors  # noqa: E402
from normlab.lab import reproduce as rep  # noqa: E402
from normlab.lab.claims import PROFILES  # noqa: E402
from normlab.lab.train import DeviceError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one worker, so one cluster (the fixture is per module)


@pytest.fixture(scope="module")
def cluster():
    executor = executors.RayExecutor(num_cpus=2)
    yield executor
    executor.shutdown()


def without_timing(doc):
    doc = json.loads(json.dumps(doc))
    for key in ("created", "seconds"):
        doc.pop(key)
    for r in doc["runs"].values():
        r["result"].pop("seconds")
        r["result"].pop("group_size")
    return doc


def test_ray_gives_the_numbers_of_the_local_pool(tmp_path, cluster, mnist1d):
    claims = ["stable-distributions", "ghost-batches"]
    on_ray = rep.reproduce(claims, PROFILES["tiny"], tmp_path / "ray", executor=cluster, progress=False)
    local = rep.reproduce(claims, PROFILES["tiny"], tmp_path / "pool", jobs=2, progress=False)
    assert without_timing(on_ray) == without_timing(local)
    assert len(on_ray["runs"]) == len(list((tmp_path / "ray" / "runs").glob("*.json")))  # written by the driver


def _dies_once(markers, configs, device="cpu", dataset=None):
    marker = markers / configs[0].key()
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return rep.work(configs, device, dataset)


def test_a_task_lost_with_its_ray_worker_is_retried(tmp_path, cluster, monkeypatch, capsys, mnist1d):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    from test_executors import CONFIGS, untimed

    serial, _, _ = rep.run_all(CONFIGS, tmp_path / "serial", jobs=1, progress=False)
    monkeypatch.setattr(rep, "work", functools.partial(_dies_once, tmp_path))
    results, _, failed = rep.run_all(CONFIGS, tmp_path / "ray", executor=cluster, progress=True)
    assert failed == {} and untimed(results) == untimed(serial)
    assert capsys.readouterr().err.count("was lost (Ray lost the task") == 2


def test_devices_on_the_cluster(cluster):
    if cluster.cluster_gpus():
        pytest.skip("checks a cluster without GPUs")
    with pytest.raises(DeviceError, match="device cuda: the Ray cluster has no GPU; use cpu or auto"):
        executors.ray_executor(device="cuda")
    auto = executors.ray_executor(device="auto")  # the cluster this process already has; nothing asked of a GPU
    assert auto.gpus == 0.0


def test_the_command_line_on_a_local_ray_cluster(tmp_path, mnist1d):
    """`normlab reproduce --executor ray`: a cluster of its own, started and stopped by the command;
    its results.json holds the numbers of the same runs trained here, and a rerun with the local pool trains nothing."""
    import subprocess

    out = tmp_path / "ray"
    args = [sys.executable, "-m", "normlab", "reproduce", "--profile", "tiny", "--claims", "stable-distributions", "--out", str(out)]
    run = subprocess.run([*args, "--executor", "ray", "--jobs", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "on a Ray cluster of 1 CPUs" in run.stderr
    here = rep.reproduce(["stable-distributions"], PROFILES["tiny"], tmp_path / "here", jobs=1, progress=False)
    assert without_timing(json.loads((out / "results.json").read_text()))["runs"] == without_timing(here)["runs"]
    again = subprocess.run([*args, "--jobs", "2"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "runs to train" not in again.stderr
