"""torchvision and timm for the tests, on a torch they were not built against.

torchvision's wheel for torch 2.13 is linked against CUDA; beside the CPU build of torch its
C++ library (``torchvision/_C.so``) does not load, and ``import torchvision`` then fails
("operator torchvision::nms does not exist"): its Python side registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` whether or not the library loaded. So when
the library does not load, :func:`import_torchvision` first defines those operators' schemas
(as torchvision's C++ would, without kernels: the models tested here never call them).
Where the library loads (a CPU build of torchvision, or a GPU machine) nothing is defined.
timm imports torchvision, so it goes through here too. Tests only: normlab never imports
either.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys

import pytest
import torch

# torchvision's own schemas (torchvision/csrc/ops/nms.cpp and quantized/cpu/qnms_kernel.cpp)
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_libraries = []  # a torch.library.Library unregisters its definitions when collected: keep it


def _ops_library_loads(package_dir: str) -> bool:
    for path in glob.glob(os.path.join(package_dir, "_C*.so")) + glob.glob(os.path.join(package_dir, "_C*.pyd")):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False


def _defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def import_torchvision():
    """``import torchvision``, defining the operator schemas it needs if its library cannot load;
    skips the test if torchvision is not installed."""
    if "torchvision" not in sys.modules:
        spec = importlib.util.find_spec("torchvision")
        if spec is None:
            pytest.skip("torchvision is not installed (it is in normlab's test extra)")
        if not _ops_library_loads(spec.submodule_search_locations[0]):
            missing = [schema for name, schema in SCHEMAS.items() if not _defined(name)]
            if missing:
                library = torch.library.Library("torchvision", "FRAGMENT")
                for schema in missing:
                    library.define(schema)
                _libraries.append(library)
    return importlib.import_module("torchvision")


def import_timm():
    """``import timm`` (which imports torchvision); skips the test if timm is not installed."""
    import_torchvision()
    return pytest.importorskip("timm")
