"""Where the lab's groups of runs train: :class:`WorkerPool` here, :class:`RayExecutor` on a cluster.

:func:`normlab.lab.reproduce.run_all` takes any :class:`concurrent.futures.Executor`
and submits one group of runs per task (``work(group, device, data)``); the driver
alone writes the results into ``OUT/runs/``, so the workers need no shared file
system. Two executors come with the lab:

- :class:`WorkerPool`, the default: ``jobs`` long-lived worker processes on this
  machine, one task at a time each. A worker that dies (killed, out of memory) fails
  its own task only, with :class:`WorkerLost`, and is replaced; ``run_all`` retries
  such a task a few times before it reports its runs as failed. Workers die with the
  driver, whatever ends it (SIGKILL included): see :func:`die_with_parent`.
- :class:`RayExecutor`: the same tasks on a Ray cluster (``pip install 'normlab[ray]'``),
  a local one when no address is given; each task asks for one CPU and, on GPUs, a
  fraction of one, so that small groups share a GPU. Ray reuses its worker processes
  from task to task. A task lost with its worker or node comes back as
  :class:`WorkerLost` and is retried like a local one.

Any other executor works too (``ProcessPoolExecutor``, dask's, loky's); one whose
workers cannot be replaced (a broken ``ProcessPoolExecutor``) fails what is left
with ``BrokenExecutor``, which ``run_all`` treats as lost.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading

__all__ = ["WorkerPool", "RayExecutor", "ray_executor", "WorkerLost", "LOST", "die_with_parent", "GPUS_PER_GROUP"]

GPUS_PER_GROUP = 0.25  # on a GPU cluster, what a group asks for by default: four small groups share a GPU

POLL_SECONDS = 0.25  # how often a worker checks that its driver is still there


class WorkerLost(RuntimeError):
    """The process (or node) running a task died before the task returned."""


LOST = (WorkerLost, cf.BrokenExecutor)  # what run_all retries: the task did not fail, its worker did


def die_with_parent(parent: int) -> None:
    """End this process when the process ``parent`` goes away, whatever ends it.

    On Linux the kernel sends SIGKILL at once (``prctl(PR_SET_PDEATHSIG)``); everywhere
    a daemon thread also checks every :data:`POLL_SECONDS` that the parent is still the
    parent (after its death the process is re-parented), which covers other systems
    and the instant between the fork and the ``prctl``."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent:
            threading.Event().wait(POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="normlab-parent-watch", daemon=True).start()


def _serve(conn, parent: int) -> None:
    """A worker's life: tasks in through ``conn``, one at a time, their outcomes back, until told to stop."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args, kwargs = task
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException as e:  # sent back to the driver, raised there by the task's future
            outcome = (False, e)
        try:
            conn.send(outcome)
        except Exception as e:  # an outcome that does not pickle
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


class WorkerPool(cf.Executor):
    """``workers`` long-lived processes (started with ``spawn``, one thread of this process each),
    running the submitted tasks one at a time each; see the module docstring.

        with WorkerPool(2) as pool:
            results, _ = run_all(configs, "out", executor=pool)
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"WorkerPool: needs at least one worker, got {workers}")
        self.workers = workers
        self._context = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._processes: dict[int, multiprocessing.Process] = {}  # by slot: the live workers, for tests and shutdown
        self._threads = [threading.Thread(target=self._slot, args=(i,), name=f"normlab-worker-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def _start(self, slot: int):
        here, there = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(there, os.getpid()), name=f"normlab-worker-{slot}", daemon=True)
        process.start()
        there.close()
        self._processes[slot] = process
        return process, here

    def _slot(self, slot: int) -> None:
        process, conn = None, None
        try:
            while True:
                item = self._tasks.get()
                if item is None:
                    return
                future, fn, args, kwargs = item
                if not future.set_running_or_notify_cancel():
                    continue
                if process is None or not process.is_alive():
                    process, conn = self._start(slot)
                try:
                    conn.send((fn, args, kwargs))
                    ready = multiprocessing.connection.wait([conn, process.sentinel])
                    ok, value = conn.recv() if conn in ready else (False, None)
                except (EOFError, OSError, BrokenPipeError):
                    ok, value = False, None
                if value is None and not ok:
                    process.join(1)
                    code = process.exitcode
                    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                    future.set_exception(WorkerLost(f"worker process {process.pid} died ({how}) while running this task"))
                    process, conn = None, None
                elif ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        finally:
            if process is not None:
                try:
                    conn.send(None)
                except OSError:
                    pass
                process.join(5)
                if process.is_alive():
                    process.kill()
                self._processes.pop(slot, None)

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        if self._closed:
            raise RuntimeError("WorkerPool: cannot submit after shutdown")
        future: cf.Future = cf.Future()
        self._tasks.put((future, fn, args, kwargs))
        return future

    def pids(self) -> list[int]:
        """The worker processes alive now."""
        return [p.pid for p in list(self._processes.values()) if p.is_alive()]

    def terminate(self) -> None:
        """Stop now: pending tasks cancelled, running ones killed with their workers (their futures fail)."""
        self.shutdown(wait=False, cancel_futures=True)
        for p in list(self._processes.values()):
            p.kill()
        for t in self._threads:
            t.join()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._closed:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        item = self._tasks.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._tasks.put(None)
        if wait:
            for t in self._threads:
                t.join()


def _call(fn, *args, **kwargs):
    """A Ray task calling ``fn`` (any callable: Ray's own remote functions take only plain functions)."""
    return fn(*args, **kwargs)


class RayExecutor(cf.Executor):
    """Tasks on a Ray cluster: the one at ``address`` (``"auto"``: the one this machine belongs to),
    or a local one of ``num_cpus`` CPUs started here (and stopped by :meth:`shutdown`).

    Each task asks for one CPU and ``gpus`` GPUs (a fraction: 0.25 lets four groups share
    one). Arguments that are large and repeated (the dataset) go to Ray's object store once.
    """

    def __init__(self, address: str | None = None, gpus: float = 0.0, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError as e:
            raise ImportError("--executor ray needs Ray: pip install 'normlab[ray]'") from e
        self._ray = ray
        self.gpus = float(gpus)
        self._owned = not ray.is_initialized()
        if self._owned:
            options = {"address": address} if address else {"num_cpus": num_cpus}
            ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._call = ray.remote(_call)
        self._shared: dict[int, tuple[object, object]] = {}

    def __str__(self) -> str:
        cpus = self._ray.cluster_resources().get("CPU", 0)
        return f"on a Ray cluster of {cpus:g} CPUs" + (f", {self.gpus:g} GPU per group" if self.gpus else "")

    def cluster_gpus(self) -> float:
        """GPUs in the cluster (0 where there are none)."""
        return float(self._ray.cluster_resources().get("GPU", 0))

    def share(self, value):
        """``value`` in the object store, once: a reference tasks receive as the value itself."""
        if id(value) not in self._shared:
            self._shared[id(value)] = (value, self._ray.put(value))  # the value kept, so that its id is not reused
        return self._shared[id(value)][1]

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        ray = self._ray
        ref = self._call.options(num_cpus=1, num_gpus=self.gpus, max_retries=0).remote(fn, *args, **kwargs)
        outer: cf.Future = cf.Future()
        outer.set_running_or_notify_cancel()

        def done(inner: cf.Future) -> None:
            e = inner.exception()
            if e is None:
                outer.set_result(inner.result())
            elif isinstance(e, ray.exceptions.RayTaskError):  # the task itself raised: its own exception
                outer.set_exception(e.as_instanceof_cause())
            else:  # the worker, its node or the object was lost
                outer.set_exception(WorkerLost(f"Ray lost the task: {type(e).__name__}: {e}"))

        ref.future().add_done_callback(done)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False


def ray_executor(address: str | None = None, device: str = "cpu", gpus: float | None = None, num_cpus: int | None = None) -> RayExecutor:
    """The :class:`RayExecutor` ``normlab reproduce --executor ray`` uses: on the cluster at ``address``
    (a local one of ``num_cpus`` CPUs when None), each group asking for ``gpus`` GPUs (default:
    :data:`GPUS_PER_GROUP` when ``device`` is not "cpu" and the cluster has GPUs, else none).
    ``device="cuda"`` on a cluster without GPUs is a :class:`~normlab.lab.train.DeviceError`."""
    from .train import DeviceError

    try:
        executor = RayExecutor(address, 0.0, num_cpus)
    except ConnectionError as e:
        raise ConnectionError(f"cannot reach the Ray cluster at {address}: {e}") from e
    has = executor.cluster_gpus()
    if gpus is None:
        gpus = GPUS_PER_GROUP if device != "cpu" and has else 0.0
    problem = None
    if device.startswith("cuda") and not has:
        problem = f"device {device}: the Ray cluster{' at ' + address if address else ''} has no GPU; use cpu or auto"
    elif device.startswith("cuda") and not gpus:
        problem = f"device {device} with 0 GPUs per group: Ray would give the tasks no GPU; ask for a fraction (e.g. 0.25)"
    elif gpus > max(has, 0) or gpus < 0:
        problem = f"{gpus} GPUs per group: the Ray cluster has {has:g}"
    if problem:
        executor.shutdown()
        raise DeviceError(problem)
    executor.gpus = float(gpus)
    return executor
