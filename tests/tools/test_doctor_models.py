"""The doctor on real architectures (torchvision's and timm's, random init): no finding on a clean
model, and on a model with a known mistake that mistake and nothing else."""

import pytest
import torch
from conftest import import_torchvision

import normlab

pytestmark = pytest.mark.slow

IMAGES = (8, 3, 64, 64)  # 8 samples, and 2 x 2 positions at the deepest stage: 32 values per channel

TORCHVISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "mnasnet0_5", "shufflenet_v2_x0_5", "densenet121"]
TIMM = {  # name -> create_model's arguments
    "resnet18": {},  # zero-initialized last gamma of each block
    "efficientnet_b0": {"drop_rate": 0.2, "drop_path_rate": 0.2},  # BatchNormAct2d; dropout after the last batch norm
    "mobilenetv3_small_100": {},
    "regnety_002": {},
    "ese_vovnet19b_dw": {},
    "ghostnet_100": {},
    "repvgg_a0": {},  # random gammas, a few near 0 before training
    "lcnet_050": {},
}


def examine(model, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return normlab.doctor(model, x)


@pytest.mark.parametrize("name", TORCHVISION)
def test_clean_torchvision_models_have_no_findings(name):
    model = getattr(import_torchvision().models, name)()
    assert examine(model, IMAGES) == []


@pytest.mark.parametrize("name", list(TIMM))
def test_clean_timm_models_have_no_findings(name):
    import_torchvision()
    timm = pytest.importorskip("timm")
    assert examine(timm.create_model(name, pretrained=False, **TIMM[name]), IMAGES) == []


def test_real_mistakes_are_found_and_nothing_else():
    torchvision = import_torchvision()
    timm = pytest.importorskip("timm")
    # ReXNet's squeeze-excitation blocks: a 1x1 convolution with a bias, then a batch norm (of one
    # value per sample and channel, hence 32 samples)
    rexnet = timm.create_model("rexnet_100", pretrained=False)
    findings = examine(rexnet, (32, 3, 32, 32))
    biased = [name for name, m in rexnet.named_modules() if name.endswith("se.fc1") and m.bias is not None]
    assert biased and [(f.code, f.layer) for f in findings] == [("bias-before-bn", name) for name in biased]
    # DenseNet's dropout (drop_rate) is F.dropout inside each dense layer, read by the next layers' batch norms
    findings = examine(torchvision.models.densenet121(drop_rate=0.2), IMAGES)
    assert {f.code for f in findings} == {"bn-after-dropout"}
    assert findings[0].layer == "features.denseblock1.denselayer2.norm1"
    assert "F.dropout(p=0.2) in features.denseblock1.denselayer1" in findings[0].message
