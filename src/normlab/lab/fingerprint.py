"""What a run's numbers depend on besides its config: the machine and the numerical software.

A run is bit for bit the same when repeated on the same machine with the same software;
on another CPU, or with another build of torch, MKL or oneDNN, the first update already
differs by rounding and training amplifies it. :func:`fingerprint` records what decides
that: the CPU model and its flags, the vector instructions torch's CPU kernels use
(``torch.backends.cpu.get_cpu_capability()``), the versions of torch, MKL, oneDNN and
NumPy, and the threads per run; for runs trained on a GPU, also the device's name,
its compute capability and the CUDA and cuDNN versions. ``normlab reproduce`` stores
it with every run and in ``results.json``; a report whose runs come from more than one
fingerprint says so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import platform
import re

import numpy
import torch

__all__ = ["fingerprint", "fingerprint_id", "THREADS"]

THREADS = 1  # every run trains on one thread (normlab.lab.train)


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and feature flags (Linux's /proc/cpuinfo; elsewhere what platform says)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = re.search(r"^(?:model name|Processor|cpu model)\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return (model.group(1).strip() if model else platform.machine()), sorted(set(flags.group(1).split())) if flags else []


def _library(pattern: str) -> str | None:
    found = re.search(pattern, torch.__config__.show())
    return found.group(1).strip() if found else None


@functools.lru_cache(maxsize=4)
def fingerprint(device: str = "cpu") -> dict:
    """The fingerprint of runs trained by this process on ``device``: a JSON-ready dict (see the module docstring)."""
    model, flags = _cpu()
    gpu = {}
    if torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        gpu = {
            "device": torch.cuda.get_device_name(index),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return {
        "cpu": model,
        "cpu_flags": flags,
        "machine": platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "mkl": _library(r"Math Kernel Library Version ([^\n]+?)(?: for |\n)"),
        "onednn": _library(r"MKL-DNN v([\d.]+)"),
        "numpy": numpy.__version__,
        "threads": THREADS,
        **gpu,
    }


def fingerprint_id(fp: dict) -> str:
    """A short name of a fingerprint: the same for the same machine and software."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
