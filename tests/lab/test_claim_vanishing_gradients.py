"""vanishing-gradients: per-layer gradient norms and their spread on a network whose gradients are
known by hand, the measure in a run, and the verdict on constructed figures."""

import math

import pytest
import torch
from torch import nn

from normlab.lab import stats
from normlab.lab.claims import CLAIMS
from normlab.lab.claims.vanishing_gradients import FLOOR, layer_gradient_norms, spread
from normlab.lab.models import ModelSpec
from normlab.lab.train import RunConfig, train

CLAIM = CLAIMS["vanishing-gradients"]


def test_norms_and_spread_of_a_chain_known_by_hand():
    # y = w3 w2 w1 x with (w1, w2, w3) = (1, 2, 4) and x = 3: dy/dw1 = w3 w2 x = 24, dy/dw2 = w3 w1 x = 12, dy/dw3 = w2 w1 x = 6
    chain = nn.Sequential(*(nn.Linear(1, 1, bias=False) for _ in range(3)))
    with torch.no_grad():
        for layer, w in zip(chain, (1.0, 2.0, 4.0)):
            layer.weight.fill_(w)
    y = chain(torch.tensor([[3.0]])).sum()
    norms = layer_gradient_norms(chain, y)
    assert norms == pytest.approx([24.0, 12.0, 6.0])
    assert spread(norms) == pytest.approx(math.log10(4))  # two doublings: 0.6 decades
    # the same weight everywhere: the gradient reaching an earlier layer is smaller, but so much larger is its
    # input; in a linear chain the two cancel and every weight's gradient is the same (0.03): no spread
    with torch.no_grad():
        for layer in chain:
            layer.weight.fill_(0.1)
    assert spread(layer_gradient_norms(chain, chain(torch.tensor([[3.0]])).sum())) == pytest.approx(0.0, abs=1e-6)
    assert spread([1.0, 0.0]) == pytest.approx(-math.log10(FLOOR))  # a dead layer: the floor, not infinity


def test_the_measure_in_a_run(mnist1d):
    config = RunConfig(ModelSpec("mlp", 4, 8, "sigmoid"), steps=20, eval_every=10, measures=("gradient_norms",))
    m = train(config, mnist1d)["measures"]["gradient_norms"]
    assert m["step"] == [0, 10] and all(len(v) == 5 and min(v) > 0 for v in m["value"])  # 4 hidden layers and the classifier
    # without BN the sigmoids shrink every gradient on its way back: the first layer's is the smallest
    assert m["value"][0][0] < m["value"][0][-1]


def figures(no_bn, bn, no_bn_training=None, bn_training=None):
    f = {}
    for when, (plain, normed) in {
        "spread at initialization (decades)": (no_bn, bn),
        "spread over training (mean after step 0, decades)": (no_bn_training or no_bn, bn_training or bn),
    }.items():
        f[f"{when}, no BN"], f[f"{when}, BN"] = stats.stat(plain), stats.stat(normed)
    return f


def test_verdict():
    assert stats.decide(CLAIM.parts(figures([9.8, 10.1, 10.0, 9.9], [1.1, 1.3, 1.2, 1.0]))).verdict == stats.REPRODUCED
    # BN's spread as large as without: it does not prevent anything
    assert stats.decide(CLAIM.parts(figures([9.8, 10.1, 10.0, 9.9], [9.9, 10.0, 10.2, 9.8]))).verdict == stats.NOT_REPRODUCED
    # at initialization clear, over training within the noise
    f = figures([9.8, 10.1, 10.0, 9.9], [1.1, 1.3, 1.2, 1.0], [3.0, 6.0, 1.0, 4.0], [2.0, 1.0, 4.0, 3.5])
    assert stats.decide(CLAIM.parts(f)).verdict == stats.INCONCLUSIVE
