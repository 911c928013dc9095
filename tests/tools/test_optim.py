"""normlab.param_groups: norms and biases without weight decay, everything else with it, each
parameter once; the groups go into a torch optimizer as they are."""

import pytest
import torch
from torch import nn

import normlab


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = normlab.BatchNorm2d(8)
        self.torch_bn = nn.BatchNorm2d(8)
        self.gn = normlab.GroupNorm(2, 8)
        self.attention = nn.MultiheadAttention(8, 2)  # in_proj_bias and out_proj.bias
        self.ln = nn.LayerNorm(8)
        self.rms = normlab.RMSNorm(8)
        self.head = nn.Linear(8, 4)
        self.tied = nn.Linear(8, 4)
        self.tied.weight = self.head.weight  # shared: one parameter, listed once

    def forward(self, x):
        x = self.gn(self.torch_bn(self.bn(self.conv(x)))).mean((2, 3))[None]
        x = self.rms(self.ln(self.attention(x, x, x)[0]))[0]
        return self.head(x) + self.tied(x)


def names(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def test_norms_and_biases_go_without_weight_decay():
    model = Net()
    decay, no_decay = normlab.param_groups(model, weight_decay=5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert names(model, decay["params"]) == {"conv.weight", "attention.in_proj_weight", "attention.out_proj.weight", "head.weight"}
    assert names(model, no_decay["params"]) == {
        "bn.weight", "bn.bias", "torch_bn.weight", "torch_bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias",
        "rms.weight", "attention.in_proj_bias", "attention.out_proj.bias", "head.bias", "tied.bias",
    }  # fmt: skip
    listed = decay["params"] + no_decay["params"]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))


def test_the_groups_go_straight_into_an_optimizer_and_decay_only_the_first():
    model = Net()
    optimizer = torch.optim.SGD(normlab.param_groups(model, weight_decay=0.1), lr=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: whatever moves, weight decay moved it
    optimizer.step()
    for n, p in model.named_parameters():
        decayed = n in {"conv.weight", "attention.in_proj_weight", "attention.out_proj.weight", "head.weight"}
        assert torch.allclose(p, before[n] * (0.9 if decayed else 1.0)), n


def test_options_frozen_parameters_and_bad_values():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model[0].weight.requires_grad_(False)
    decay, no_decay = normlab.param_groups(model, weight_decay=0.01, lr=0.5)
    assert decay["lr"] == no_decay["lr"] == 0.5
    assert decay["params"] == [model[0].weight]  # frozen parameters are listed too: an optimizer skips them
    torch.optim.AdamW(normlab.param_groups(nn.Sequential(nn.BatchNorm1d(3)), weight_decay=0.01))  # an empty group is fine
    with pytest.raises(ValueError, match="weight_decay must be non-negative"):
        normlab.param_groups(model, weight_decay=-1)
