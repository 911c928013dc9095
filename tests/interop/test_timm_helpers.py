"""timm's batch-norm helpers find layers with ``isinstance``: ``timm.layers.freeze_batch_norm_2d``
(every ``BatchNorm2d`` / ``SyncBatchNorm`` becomes torchvision's ``FrozenBatchNorm2d``, computing
the layer's inference map) and ``timm.layers.convert_sync_batchnorm`` (every ``_BatchNorm``
becomes torch's ``SyncBatchNorm``, timm's own norm-act layers its ``SyncBatchNormAct``).
Like torch's converter, both build timm's or torch's plain classes: what a normlab variant
adds is lost (normlab's ``freeze_batchnorm`` and ``convert_sync_batchnorm`` keep it)."""

import copy

import torch
from torch import nn

from conftest import assert_rel
from interop_cases import BOTH, rand, randomize
from vision_libraries import import_timm


def model_and_input(lib):
    torch.manual_seed(0)
    x = rand(4, 3, 6, 6)
    return randomize(nn.Sequential(nn.Conv2d(3, 4, 3), lib.BatchNorm2d(4), nn.ReLU()), x), x


@BOTH
def test_timm_freeze_batch_norm_2d(lib):
    timm = import_timm()
    model, x = model_and_input(lib)
    expected = copy.deepcopy(model).eval()(x)
    frozen = timm.layers.freeze_batch_norm_2d(model)
    assert type(frozen[1]) is timm.layers.norm_act.FrozenBatchNorm2d  # torchvision's
    frozen.train()  # frozen: the inference map in training too
    assert_rel(frozen(x), expected, 1e-6, "frozen output")


@BOTH
def test_timm_convert_sync_batchnorm(lib):
    timm = import_timm()
    model, x = model_and_input(lib)
    weight = model[1].weight
    reference = copy.deepcopy(model)
    converted = timm.layers.convert_sync_batchnorm(model)
    assert type(converted[1]) is nn.SyncBatchNorm and converted[1].weight is weight
    assert_rel(converted(x), reference(x), 1e-6, "training output, outside a process group")
