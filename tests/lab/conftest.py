"""The lab's tests generate MNIST-1D once per test session, into a temporary cache."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def lab_cache(tmp_path_factory):
    """Point NORMLAB_CACHE (inherited by subprocesses) at a fresh folder for the session."""
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
