"""normlab.convert: swap layers between torch.nn and normlab.nn keeping parameters, buffers, device, dtype and mode."""

import copy
import inspect

import pytest
import torch
from conftest import assert_rel
from torch import nn

import normlab

# torch's batch norm takes bias=False (a scale without a shift) only in recent versions (after 2.10)
NO_SHIFT = {"bias": False} if "bias" in inspect.signature(nn.BatchNorm2d).parameters else {}


def torch_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU(),
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, eps=1e-3, affine=False),
        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False, **NO_SHIFT),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5),
        nn.Unflatten(1, (5, 1, 1, 1)), nn.BatchNorm3d(5),
    ).double()  # fmt: skip
    model[9].weight.requires_grad_(False)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 6, 6, dtype=torch.float64))  # running statistics away from 0 and 1
    model[4].eval()  # a mixed mode that must survive
    return model


def test_torch_to_normlab_and_back():
    model = torch_model()
    original = copy.deepcopy(model)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    modes = [m.training for m in model.modules()]

    converted = normlab.convert(model, to="normlab")
    assert converted is model
    assert [type(m).__module__ for m in converted if "BatchNorm" in type(m).__name__] == ["normlab.nn.batchnorm"] * 5
    assert dict(converted.named_parameters()) == params  # the very same Parameter objects ...
    assert all(dict(converted.named_buffers())[k] is b for k, b in buffers.items())  # ... and buffers
    assert [m.training for m in converted.modules()] == modes
    assert converted[1].momentum is None and converted[4].eps == 1e-3 and not converted[4].affine
    assert not converted[6].track_running_stats and (converted[6].bias is None) == bool(NO_SHIFT)
    assert converted[9].weight.dtype == torch.float64 and not converted[9].weight.requires_grad
    assert converted.state_dict().keys() == original.state_dict().keys()

    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    for train in (True, False):
        converted.train(train), original.train(train)
        with torch.no_grad():
            assert_rel(converted(x), original(x), 1e-10, f"train={train}")
    for k, v in converted.state_dict().items():  # the training pass updated both alike
        assert torch.equal(v, original.state_dict()[k]), k

    back = normlab.convert(converted, to="torch")
    assert [type(m) for m in back] == [type(m) for m in original]
    assert dict(back.named_parameters()) == params


def test_optimizer_keeps_working():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    normlab.convert(model)
    model(torch.randn(8, 3)).square().sum().backward()
    before = model[1].weight.detach().clone()
    opt.step()
    assert not torch.equal(model[1].weight, before)


def test_shared_layers_stay_shared_and_subclasses_stay():
    class MyBatchNorm(nn.BatchNorm1d):
        pass

    bn = nn.BatchNorm1d(3)
    model = nn.ModuleDict({"a": nn.Sequential(bn), "b": nn.Sequential(bn), "mine": MyBatchNorm(3)})
    normlab.convert(model)
    assert model["a"][0] is model["b"][0] and isinstance(model["a"][0], normlab.BatchNorm1d)
    assert type(model["mine"]) is MyBatchNorm
    lone = normlab.convert(normlab.BatchNorm2d(3).eval(), to="torch")
    assert type(lone) is nn.BatchNorm2d and not lone.training


def test_pairs_every_class_normlab_nn_shares_with_torch_nn(monkeypatch):
    """Layers other developers add to normlab.nn are paired by name as they land: stand-ins show it."""
    names = ["LayerNorm", "GroupNorm", "InstanceNorm2d", "RMSNorm"]
    stand_ins = {name: type(name, (getattr(nn, name),), {"__module__": "normlab.nn"}) for name in names}
    for name, cls in stand_ins.items():
        monkeypatch.setattr(normlab.nn, name, cls, raising=False)
    monkeypatch.setattr(normlab.nn, "__all__", [*normlab.nn.__all__, *names])
    assert set(normlab.tools.counterparts("normlab").values()) >= set(stand_ins.values())

    model = nn.Sequential(
        nn.LayerNorm([4, 5, 5], eps=1e-3, bias=False), nn.GroupNorm(2, 4, affine=False),
        nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.RMSNorm(5, eps=None),
    )  # fmt: skip
    original = copy.deepcopy(model)
    normlab.convert(model)
    assert [type(m) for m in model] == list(stand_ins.values())
    ln, gn, inorm, rms = model
    assert ln.normalized_shape == (4, 5, 5) and ln.eps == 1e-3 and ln.bias is None and ln.weight is not None
    assert gn.num_groups == 2 and gn.weight is None
    assert inorm.track_running_stats and inorm.running_mean is not None and inorm.affine
    assert rms.eps is None and rms.normalized_shape == (5,)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert_rel(model(x), original(x), 1e-6)


def test_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="to must be 'normlab' or 'torch'"):
        normlab.convert(nn.BatchNorm1d(2), to="keras")

    class BatchNorm1d(normlab.BatchNorm1d):  # a counterpart with state torch's lacks
        def __init__(self, num_features, device=None):
            super().__init__(num_features, device=device)
            self.register_buffer("extra", torch.zeros(1, device=device))

    monkeypatch.setattr(normlab.nn, "BatchNorm1d", BatchNorm1d)
    with pytest.raises(ValueError, match=r"0 \(BatchNorm1d\(2\)\) has parameters.*cannot hold its state"):
        normlab.convert(nn.Sequential(nn.BatchNorm1d(2)))
