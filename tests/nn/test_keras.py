"""Keras conventions: the momentum conversion, and a batch norm built from Keras arguments that
keeps its running statistics by Keras's rule (written out here in NumPy), with Keras's
epsilon and parameters."""

import numpy as np
import pytest
import torch

import normlab
from normlab import reference as R
from conftest import assert_rel


def test_momentum_conversion_both_ways():
    assert normlab.from_keras_momentum(0.99) == 0.01
    assert normlab.from_keras_momentum(0.9) == 0.1
    assert normlab.to_keras_momentum(0.1) == 0.9
    for m in (0.0, 0.3, 0.999, 1.0):
        assert normlab.to_keras_momentum(normlab.from_keras_momentum(m)) == pytest.approx(m, abs=1e-12)
    with pytest.raises(ValueError, match=r"from_keras_momentum: a Keras momentum lies in \[0, 1\], got 99"):
        normlab.from_keras_momentum(99)
    with pytest.raises(ValueError, match="to_keras_momentum: momentum=None .* no Keras equivalent"):
        normlab.to_keras_momentum(None)


def test_keras_defaults():
    bn = normlab.batch_norm_from_keras(16)
    assert type(bn) is normlab.BatchNorm2d
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-3, 0.01, True, True)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert [type(normlab.batch_norm_from_keras(4, d)) for d in (0, 1, 3)] == [
        normlab.BatchNorm1d, normlab.BatchNorm1d, normlab.BatchNorm3d]
    with pytest.raises(ValueError, match="batch_norm_from_keras: spatial_dims must be 0, 1, 2 or 3, got 4"):
        normlab.batch_norm_from_keras(4, 4)


def test_running_statistics_follow_keras_rule(backend):
    """Keras: moving = momentum * moving + (1 - momentum) * batch. The variance that enters is
    the unbiased one here (torch's convention), the biased one in Keras."""
    keras_momentum = 0.9
    bn = normlab.batch_norm_from_keras(3, 1, momentum=keras_momentum)
    rng = np.random.default_rng(0)
    moving_mean, moving_var = np.zeros(3), np.ones(3)
    for step in range(4):
        x = rng.normal(step, 1 + step, size=(8, 3, 5))
        bn(torch.tensor(x, dtype=torch.float32))
        moving_mean = keras_momentum * moving_mean + (1 - keras_momentum) * x.mean((0, 2))
        moving_var = keras_momentum * moving_var + (1 - keras_momentum) * x.var((0, 2), ddof=1)
    assert_rel(bn.running_mean, moving_mean, 1e-5, "running_mean")
    assert_rel(bn.running_var, moving_var, 1e-5, "running_var")


@pytest.mark.parametrize("center,scale", [(True, True), (True, False), (False, True), (False, False)])
def test_center_and_scale_decide_the_parameters(backend, center, scale):
    bn = normlab.batch_norm_from_keras(3, 0, center=center, scale=scale)
    expected = ["weight"] * scale + ["bias"] * center
    assert [n for n, _ in bn.named_parameters()] == expected
    rng = np.random.default_rng(1)
    x = rng.normal(2, 3, size=(6, 3))
    gamma, beta = rng.uniform(0.5, 2, size=3), rng.normal(size=3)
    with torch.no_grad():
        if scale:
            bn.weight.copy_(torch.tensor(gamma))
        if center:
            bn.bias.copy_(torch.tensor(beta))
    y_ref, _ = R.batch_norm_train(x, gamma if scale else None, beta if center else None, eps=1e-3)
    assert_rel(bn(torch.tensor(x, dtype=torch.float32)), y_ref, 1e-5)
    bn.reset_parameters()  # a layer without gamma still resets
    bn.eval()
    y_ref = R.batch_norm_eval(x, bn.running_mean.numpy(), bn.running_var.numpy(), eps=1e-3)
    assert_rel(bn(torch.tensor(x, dtype=torch.float32)), y_ref, 1e-5)
