"""Model specs: the networks they build, layer by layer, and their errors."""

import pytest
import torch
from torch import nn

import normlab
from normlab.lab.models import NORMS, ModelSpec, build, macs

IOFFE = ModelSpec("mlp", depth=3, width=100, activation="sigmoid")


def kinds(model):
    return [type(m).__name__ for m in model]


def test_ioffe_mlp():
    model = build(IOFFE, (1, 40), 10)
    assert kinds(model) == ["Flatten"] + ["Linear", "Sigmoid"] * 3 + ["Linear"]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(40, 100), (100, 100), (100, 100), (100, 10)]
    assert sum(p.numel() for p in model.parameters()) == 40 * 100 + 100 + 2 * (100 * 100 + 100) + 100 * 10 + 10
    assert model(torch.randn(7, 1, 40)).shape == (7, 10)
    assert macs(model, (1, 40)) == 40 * 100 + 2 * 100 * 100 + 100 * 10


def test_normalization_before_and_after_the_activation():
    before = build(ModelSpec("mlp", 3, 100, "sigmoid", "bn"), (1, 40), 10)
    assert kinds(before)[1:4] == ["Linear", "BatchNorm1d", "Sigmoid"]
    assert all(isinstance(m, normlab.BatchNorm1d) for m in before if "BatchNorm" in type(m).__name__)
    assert all(m.bias is None for m in before[:-1] if isinstance(m, nn.Linear))  # BN's shift replaces the bias
    after = build(ModelSpec("mlp", 2, 8, "relu", "bn", placement="after"), (1, 40), 10)
    assert kinds(after) == ["Flatten", "Linear", "ReLU", "BatchNorm1d", "Linear", "ReLU", "BatchNorm1d", "Linear"]
    assert after[1].bias is not None


def test_seed_cnn_1d():
    spec = ModelSpec("cnn", depth=5, width=60, activation="sigmoid", norm="bn", dropout=0.15, final_width=100)
    model = build(spec, (1, 40), 10)
    convs = [m for m in model if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == (
        [(1, 60, (3,), (1,))] + [(60, 60, (3,), (1,))] * 7 + [(60, 100, (3,), (1,)), (100, 100, (3,), (1,))]
    )
    assert sum(isinstance(m, nn.MaxPool1d) for m in model) == 4
    assert {m.p for m in model if isinstance(m, nn.Dropout)} == {0.15}
    assert sum(isinstance(m, normlab.BatchNorm1d) for m in model) == 10
    assert model[-1].in_features == 100 * 2  # 40 -> 20 -> 10 -> 5 -> 2
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)


def test_seed_cnn_2d_for_images():
    model = build(ModelSpec("cnn", depth=3, width=8, activation="relu", norm="bn", final_width=12), (3, 32, 32), 100)
    assert sum(isinstance(m, nn.Conv2d) for m in model) == 6 and sum(isinstance(m, normlab.BatchNorm2d) for m in model) == 6
    assert model[-1].in_features == 12 * 8 * 8 and model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_in_the_table_builds(norm):
    for spec, shape in [(ModelSpec("mlp", 2, 8, norm=norm), (1, 12)), (ModelSpec("cnn", 2, 4, norm=norm, final_width=4), (1, 12))]:
        model = build(spec, shape, 3)
        model(torch.randn(4, *shape)).sum().backward()
        if norm == "none":
            assert not any(isinstance(m, normlab.nn._base.NormBase) for m in model)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "transformer"}, "kind"),
        ({"norm": "bogus"}, "norm must be one of"),
        ({"activation": "gelu2"}, "activation"),
        ({"placement": "middle"}, "placement"),
        ({"dropout": 1.0}, "dropout"),
        ({"depth": 0}, "depth"),
    ],
)
def test_bad_specs(fields, message):
    with pytest.raises(ValueError, match=f"ModelSpec: .*{message}"):
        ModelSpec(**fields)


def test_cnn_too_deep_for_its_input():
    with pytest.raises(ValueError, match="pool samples of shape"):
        build(ModelSpec("cnn", depth=8, width=4), (1, 40), 10)
    with pytest.raises(ValueError, match=r"\(C, L\) or \(C, H, W\)"):
        build(ModelSpec("cnn"), (40,), 10)
