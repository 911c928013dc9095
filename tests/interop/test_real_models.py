"""Real models converted with ``normlab.convert``: torchvision's resnet18, mobilenet_v3_small,
efficientnet_b0 and convnext_tiny (and a resnet18 with FrozenBatchNorm2d, as detection
backbones use), timm's resnet50, efficientnet_b0 (BatchNormAct2d), convnext_atto
(LayerNorm2d) and a tiny ViT, each at random initialization (nothing is downloaded).

- ``convert`` converts every normalization layer it has a counterpart for, and names in a
  warning the class of every normalization layer it leaves (a subclass of torch's, timm's
  norm-act layers, FrozenBatchNorm2d, ...), so that nothing is left behind silently.
- In float64, the converted model's eval and training outputs, and its parameters and
  running statistics after three SGD steps (momentum 0.9), equal the original's to 1e-9
  relative to the largest value compared; dropout and stochastic depth draw the same
  numbers in both (the same seed before each forward pass).
- Converted back (``to="torch"``) every torch layer is torch's again, and the ``state_dict``
  loads into a freshly built original (timm's norm-act layers included), which then
  computes the same.

Inputs are 4 images of 32 x 32: the last stages see 1 x 1 maps, so batch norm still has 4
values per channel in training. Each model takes a few seconds: marked slow.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn

import normlab
from conftest import assert_rel
from vision_libraries import import_timm, import_torchvision

REL = 1e-9
TORCH_NORMS = tuple(
    c for c in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None)) if c
)


def randomized_frozen_resnet18():
    tv = import_torchvision()
    model = tv.models.resnet18(norm_layer=tv.ops.misc.FrozenBatchNorm2d)
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, tv.ops.misc.FrozenBatchNorm2d):  # fixed, but not the identity map
            for name, low, high in (("weight", 0.5, 1.5), ("bias", -0.5, 0.5), ("running_mean", -0.5, 0.5),
                                    ("running_var", 0.5, 2.0)):  # fmt: skip
                buffer = getattr(m, name)
                buffer.copy_(torch.rand(buffer.shape, generator=gen) * (high - low) + low)
    return model


MODELS = {
    "torchvision-resnet18": lambda: import_torchvision().models.resnet18(),
    "torchvision-resnet18-frozen-bn": randomized_frozen_resnet18,
    "torchvision-mobilenet_v3_small": lambda: import_torchvision().models.mobilenet_v3_small(),
    "torchvision-efficientnet_b0": lambda: import_torchvision().models.efficientnet_b0(),
    "torchvision-convnext_tiny": lambda: import_torchvision().models.convnext_tiny(),
    "timm-resnet50": lambda: import_timm().create_model("resnet50"),
    "timm-efficientnet_b0": lambda: import_timm().create_model("efficientnet_b0"),
    "timm-convnext_atto": lambda: import_timm().create_model("convnext_atto"),
    "timm-vit_tiny": lambda: import_timm().create_model("vit_tiny_patch16_224", img_size=32),
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().double()


def is_norm(m: nn.Module) -> bool:
    """A normalization layer: one of torch's (or a subclass), or a class named like one
    (torchvision's FrozenBatchNorm2d is a plain Module)."""
    return isinstance(m, TORCH_NORMS) or re.search(r"Norm(Act)?(\d+d)?$", type(m).__name__) is not None


def converted(model: nn.Module) -> tuple[nn.Module, str]:
    """``normlab.convert`` of a copy of ``model``, and the text of every warning it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = normlab.convert(copy.deepcopy(model))
    return result, "\n".join(str(w.message) for w in caught)


@pytest.mark.parametrize("name", MODELS)
def test_convert_converts_or_names_every_normalization(name):
    model = build(name)
    result, said = converted(model)
    table = normlab.tools.counterparts("normlab")
    for (where, before), after in zip(model.named_modules(), result.modules()):
        if type(before) in table:
            assert type(after) is table[type(before)], f"{where}: {type(before).__name__} not converted"
    left = sorted({type(m).__name__ for m in result.modules() if is_norm(m) and not type(m).__module__.startswith("normlab")})
    unnamed = [cls for cls in left if cls not in said]
    assert not unnamed, f"convert left {unnamed} unconverted without naming them in a warning (it said: {said!r})"


def sgd_steps(model, x, labels, steps=3):
    """Three SGD steps; the same seed before each forward pass, for dropout and stochastic depth."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_converted_model_computes_and_trains_as_the_original(name):
    original = build(name)
    ours, _ = converted(original)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 1000, (4,), generator=gen)

    original.eval(), ours.eval()
    with torch.no_grad():
        assert_rel(ours(x), original(x), REL, "eval output")
    original.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(0)
        expected = original(x)
        torch.manual_seed(0)
        assert_rel(ours(x), expected, REL, "training output")

    assert_rel(sgd_steps(ours, x, labels), sgd_steps(original, x, labels), REL, "losses")
    theirs = original.state_dict()
    for key, value in ours.state_dict().items():
        assert_rel(value, theirs[key], 0 if not value.is_floating_point() else REL, f"{key} after 3 steps")

    back = normlab.convert(ours, to="torch")
    back_modules, table = dict(back.named_modules()), normlab.tools.counterparts("normlab")
    for where, m in original.named_modules():
        if type(m) in table:  # torch's layers come back as themselves (others have no torch class to go to)
            assert type(back_modules[where]) is type(m), f"{where}: {type(back_modules[where]).__name__}"
    rebuilt = build(name)
    rebuilt.load_state_dict(back.state_dict())
    rebuilt.eval(), back.eval(), original.eval()
    with torch.no_grad():
        assert_rel(rebuilt(x), back(x), REL, "eval output, loaded into the original, against the converted-back model")
        assert_rel(rebuilt(x), original(x), REL, "eval output, loaded into the original")
