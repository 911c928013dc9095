"""Shared test configuration: threads, hypothesis profile, tolerances, backends."""

import os
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a CUDA GPU the Triton kernels run under Triton's interpreter on CPU tensors. Triton reads the
# switch when it is first imported, and test modules collected before the kernel tests import it (torchao
# does, in tests/interop), so it is set here, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist each worker gets one thread, so workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

settings.register_profile(
    "normlab",
    deadline=None,
    max_examples=30,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "normlab"))


def assert_rel(actual, expected, rel=1e-5, what="", scale=None):
    """max |actual - expected| <= rel * max |expected|: agreement relative to the scale of the result.

    `scale` replaces max |expected| where the result is a small difference of larger numbers
    (a mean near zero carries the rounding of the data it averages, not its own)."""
    actual, expected = (torch.as_tensor(np.array(v, dtype=np.float64)) if not torch.is_tensor(v) else v.double()
                        for v in (actual, expected))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    scale = max(scale, 1e-12)
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} x scale {scale:.3g}"


def assert_repr_like_torch(ours, theirs):
    """``ours`` prints as ``theirs`` does, but for normlab's prefix and the fields this torch's
    layer does not print (torch up to 2.10 at least has no ``bias`` argument for batch, group
    and instance norm, and does not print LayerNorm's)."""
    printed = set(re.findall(r"(\w+)=", repr(theirs)))
    mine = re.sub(r", (\w+)=[^,)]*", lambda m: m.group(0) if m.group(1) in printed else "", repr(ours))
    assert mine.replace("normlab", "") == repr(theirs).replace("torch.nn", ""), type(ours).__name__


@pytest.fixture(params=["native", "normlab"])
def backend(request):
    """Run the test under each dispatch path."""
    import normlab

    with normlab.use_backend(request.param):
        yield request.param


# --- the lab (tests/lab) ------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def lab_cache(tmp_path_factory):
    """NORMLAB_CACHE (inherited by subprocesses) in a fresh folder: MNIST-1D is generated once per session."""
    old = os.environ.get("NORMLAB_CACHE")
    os.environ["NORMLAB_CACHE"] = str(tmp_path_factory.mktemp("normlab-cache"))
    yield
    if old is None:
        os.environ.pop("NORMLAB_CACHE", None)
    else:
        os.environ["NORMLAB_CACHE"] = old


@pytest.fixture(scope="session")
def mnist1d(lab_cache):
    from normlab.lab import data

    return data.load("mnist1d")


# --- torchvision (and timm, which imports it) on torch's CPU build ----------------------------


def import_torchvision():
    """``import torchvision``, or skip the test when it is not installed.

    torchvision's wheel for this torch is CUDA-linked: on the CPU build its C++ ops do
    not load, and its import then fails registering fake kernels for two ops that do not
    exist. Defining their schemas first (tests only) lets the rest of it import; the ops
    themselves stay unusable, and no test here calls them.
    """
    import importlib.util
    import sys

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (it is in the test extra)")
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        library = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(library)  # a Library unregisters its definitions when collected
        import torchvision
    return torchvision


_LIBRARIES = []


def pytest_collection_modifyitems(items):
    """Slow tests first, in a stable order (pytest-xdist needs the same order on every worker): the
    Makefile's `--dist loadgroup` hands the first items out to the workers in turn, so the long ones
    start at once on both and the short ones fill in around them, rather than one worker finishing a
    long test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
