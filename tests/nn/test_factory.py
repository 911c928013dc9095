"""normlab.create_norm: every layer by its class name and by the short names timm and detectron2
use, torch's counterparts by the same names, and a clear error for any other name."""

import inspect

import pytest
import torch

import normlab
from normlab.nn.factory import ALIASES, NOT_A_LAYER, norm_names

LAYERS = [n for n in normlab.nn.__all__ if inspect.isclass(getattr(normlab.nn, n)) and n not in NOT_A_LAYER]


def channels(layer) -> int:
    """The number of channels a layer was built for, whatever it calls it."""
    for attribute in ("num_features", "num_channels"):
        if hasattr(layer, attribute):
            return getattr(layer, attribute)
    return layer.normalized_shape[-1]


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_by_its_class_name_in_any_case(name):
    for spelling in (name, name.lower(), name.upper()):
        layer = normlab.create_norm(spelling, 32)
        assert type(layer) is getattr(normlab.nn, name) and channels(layer) == 32


@pytest.mark.parametrize(
    "name,expected",
    [("BN", "BatchNorm2d"), ("SyncBN", "SyncBatchNorm"), ("sync_bn", "SyncBatchNorm"), ("Sync-BN", "SyncBatchNorm"),
     ("FrozenBN", "FrozenBatchNorm"), ("GN", "GroupNorm"), ("LN", "LayerNorm"), ("IN", "InstanceNorm2d"),
     ("bn1d", "BatchNorm1d"), ("BRN", "BatchRenorm2d"), ("GBN", "GhostBatchNorm"), ("batchnorm", "BatchNorm2d"),
     ("frozenbatchnorm2d", "FrozenBatchNorm"), ("groupnorm1", "GroupNorm")],
)  # fmt: skip
def test_short_names(name, expected):
    layer = normlab.create_norm(name, 64)
    assert type(layer) is getattr(normlab.nn, expected) and channels(layer) == 64


def test_every_alias_names_a_layer():
    assert {cls for cls, _ in ALIASES.values()} <= set(LAYERS)


def test_group_norm_groups_and_keyword_arguments():
    assert normlab.create_norm("GN", 64).num_groups == 32  # detectron2's "GN"
    assert normlab.create_norm("GN", 64, num_groups=4).num_groups == 4
    assert normlab.create_norm("groupnorm1", 64).num_groups == 1  # timm's
    bn = normlab.create_norm("BN", 8, momentum=0.01, eps=1e-3, affine=False)
    assert (bn.momentum, bn.eps, bn.weight) == (0.01, 1e-3, None)
    assert normlab.create_norm("GBN", 8, virtual_batch_size=4).virtual_batch_size == 4
    with pytest.raises(ValueError, match="num_channels"):
        normlab.create_norm("GN", 30)  # not divisible by 32: the layer's own error


@pytest.mark.parametrize("name", LAYERS)
def test_torch_counterparts_by_the_same_names(name):
    theirs = getattr(torch.nn, name, None)
    if theirs is None:
        with pytest.raises(ValueError, match=f"normlab's {name}, which torch.nn does not have"):
            normlab.create_norm(name, 32, library="torch")
        return
    layer = normlab.create_norm(name, 32, library="torch")
    assert type(layer) is theirs
    # the same layer, so the same state: checkpoints move between the two
    ours = normlab.create_norm(name, 32)
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_torch_short_names():
    assert type(normlab.create_norm("SyncBN", 16, library="torch")) is torch.nn.SyncBatchNorm
    gn = normlab.create_norm("GN", 64, library="torch")
    assert type(gn) is torch.nn.GroupNorm and gn.num_groups == 32


def test_unknown_names_list_the_names():
    with pytest.raises(ValueError) as e:
        normlab.create_norm("BachNorm", 8)
    message = str(e.value)
    assert "unknown normalization 'BachNorm'" in message and "case-insensitive" in message
    assert all(n in message for n in norm_names()) and "syncbn" in message and "batchnorm2d" in message
    with pytest.raises(ValueError, match="parametrization of a weight"):
        normlab.create_norm("WeightNorm", 8)
    with pytest.raises(TypeError, match="must be a str"):
        normlab.create_norm(torch.nn.BatchNorm2d, 8)
    with pytest.raises(ValueError, match="library must be 'normlab' or 'torch'"):
        normlab.create_norm("BN", 8, library="timm")
