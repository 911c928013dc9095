"""The training loop: deterministic, logs what it says, probes without side effects, survives divergence."""

import json
import re

import numpy as np
import pytest
import torch

from normlab.lab import train
from normlab.lab.data import Dataset
from normlab.lab.models import ModelSpec, build
from normlab.lab.train import RunConfig

BN_MLP = RunConfig(ModelSpec("mlp", 3, 100, "sigmoid", "bn"), steps=30, eval_every=10, probes=("last_activation_input",))


def strip(result):
    return {k: v for k, v in result.items() if k not in ("seconds", "group_size")}


def test_deterministic_given_the_seed(mnist1d):
    first = train.train(BN_MLP, mnist1d)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the loop runs on one thread whatever the caller uses
    try:
        again = train.train(BN_MLP, mnist1d)
    finally:
        torch.set_num_threads(threads)
    assert strip(first) == strip(again)
    other = train.train(BN_MLP.but(seed=1), mnist1d)
    assert other["test_accuracy"] != first["test_accuracy"]
    json.dumps(first)  # plain numbers and lists only


def test_history(mnist1d):
    r = train.train(BN_MLP.but(steps=25), mnist1d)
    assert r["step"] == [0, 10, 20, 25]
    assert r["train_loss"][0] is None and all(0 < x < 5 for x in r["train_loss"][1:])
    assert len(r["test_accuracy"]) == 4 and r["final_test_accuracy"] == r["test_accuracy"][-1]
    # the validation split is logged beside the test split: other samples, counted the same way
    assert len(r["val_accuracy"]) == 4 and r["final_val_accuracy"] == r["val_accuracy"][-1]
    assert r["val_samples"] == len(mnist1d.y_val) == 1000 and r["val_accuracy"] != r["test_accuracy"]
    assert all(abs(a * 1000 - round(a * 1000)) < 1e-9 for a in r["val_accuracy"])
    assert r["diverged"] is None and r["classes"] == 10
    p = np.asarray(r["probes"]["last_activation_input"])
    assert p.shape == (4, 10, 3) and (p[:, :, 0] <= p[:, :, 1]).all() and (p[:, :, 1] <= p[:, :, 2]).all()


def test_training_loss_is_the_mean_since_the_last_log(mnist1d, monkeypatch):
    seen = []
    real = train._Group.objectives

    def recording(self, outputs, y):
        out = real(self, outputs, y)
        seen.append(out.item())  # a group of one: its objective this step
        return out

    monkeypatch.setattr(train._Group, "objectives", recording)
    r = train.train(RunConfig(ModelSpec("mlp", 1, 8), steps=6, eval_every=3), mnist1d)
    assert len(seen) == 6
    assert r["train_loss"][1:] == pytest.approx([np.mean(seen[:3]), np.mean(seen[3:])])


def test_probe_matches_a_direct_computation(mnist1d):
    """The percentiles of the last sigmoid's input, computed here by hand with NumPy, in training mode."""
    torch.manual_seed(0)
    model = build(BN_MLP.model, mnist1d.sample_shape, 10)
    x = mnist1d.x_test[:500]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = np.asarray(train.PROBES["last_activation_input"](model, BN_MLP.model, x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"the probe changed {k}"
    with torch.no_grad():
        h = x.flatten(1).double().numpy()
        for i, m in enumerate(model[1:-1]):
            if isinstance(m, torch.nn.Linear):
                h = h @ m.weight.double().numpy().T
            elif isinstance(m, torch.nn.Sigmoid):
                if i == len(model) - 3:
                    break
                h = 1 / (1 + np.exp(-h))
            else:  # batch norm with this batch's statistics
                h = (h - h.mean(0)) / np.sqrt(h.var(0) + m.eps) * m.weight.double().numpy() + m.bias.double().numpy()
    expected = np.percentile(h[:, :10], [15, 50, 85], axis=0).T
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_probes_do_not_change_training(mnist1d):
    with_probe = train.train(BN_MLP, mnist1d)
    without = train.train(BN_MLP.but(probes=()), mnist1d)
    assert with_probe["test_accuracy"] == without["test_accuracy"] and with_probe["train_loss"] == without["train_loss"]


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_divergence_is_recorded_not_raised(mnist1d, norm):
    config = RunConfig(ModelSpec("mlp", 3, 100, "relu", norm), lr=1e12, steps=50, eval_every=10)
    r = train.train(config, mnist1d)
    assert r["diverged"] is not None and 1 <= r["diverged"]["step"] < 50
    assert ("loss" in r["diverged"]["reason"]) or ("not finite" in r["diverged"]["reason"])
    assert r["step"][-1] < r["diverged"]["step"] and 0 <= r["final_test_accuracy"] <= 1


def test_config_key_and_round_trip():
    assert BN_MLP.key() == RunConfig.from_dict(json.loads(json.dumps(BN_MLP.to_dict()))).key()
    assert RunConfig.from_dict(BN_MLP.to_dict()) == BN_MLP
    keys = {BN_MLP.key(), BN_MLP.but(lr=0.2).key(), BN_MLP.but(model_norm="none").key(), BN_MLP.but(seed=1).key()}
    assert len(keys) == 4
    assert BN_MLP.but(model_width=7).model.width == 7


def test_bad_configs(mnist1d):
    with pytest.raises(ValueError, match="optimizer must be one of"):
        RunConfig(ModelSpec(), optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch_size"):
        RunConfig(ModelSpec(), batch_size=1)
    with pytest.raises(ValueError, match="exceeds the 4000 training samples"):
        train.train(RunConfig(ModelSpec(), batch_size=5000), mnist1d)


def test_train_subset_and_final_train_accuracy(mnist1d, monkeypatch):
    config = RunConfig(ModelSpec("mlp", 1, 16, "relu"), steps=12, eval_every=6, batch_size=10, train_subset=40)
    calls = []
    real = train._accuracies
    monkeypatch.setattr(train, "_accuracies", lambda net, K, x, y: calls.append((x, y, real(net, K, x, y))) or calls[-1][2])
    r = train.train(config, mnist1d)
    # the final training accuracy: eval mode, on exactly the 40 samples trained on, after the last step
    x, y, (value,) = calls[-1]
    assert torch.equal(x, mnist1d.x_train[:40]) and torch.equal(y, mnist1d.y_train[:40])
    assert r["final_train_accuracy"] == value and 0 < value <= 1
    # before it, at each of the 3 logs, the validation split and the test split
    assert [c[0].data_ptr() for c in calls[:-1]] == [mnist1d.x_val.data_ptr(), mnist1d.x_test.data_ptr()] * 3
    # the run is the run of a dataset whose training split is those 40 samples
    from dataclasses import replace

    only = replace(mnist1d, x_train=mnist1d.x_train[:40], y_train=mnist1d.y_train[:40])
    assert strip(train.train(config.but(train_subset=0), only)) == strip(r)
    assert strip(train.train(config.but(train_subset=80), mnist1d)) != strip(r)


def test_bad_train_subset(mnist1d):
    with pytest.raises(ValueError, match="train_subset must be non-negative"):
        RunConfig(ModelSpec(), train_subset=-1)
    with pytest.raises(ValueError, match="train_subset 5000 exceeds the 4000 training samples"):
        train.train(RunConfig(ModelSpec(), train_subset=5000), mnist1d)
    with pytest.raises(ValueError, match="batch_size 60 exceeds the 50 training samples"):
        train.train(RunConfig(ModelSpec(), train_subset=50), mnist1d)


def test_misfit_names_what_the_data_cannot_give():
    """A run that cannot train on a dataset says why before training; train() raises the same reason."""
    g = torch.Generator().manual_seed(0)
    toy = Dataset("toy", torch.randn(40, 1, 10, generator=g), torch.arange(40) % 3, torch.randn(8, 1, 10, generator=g),
                  torch.arange(8) % 3, 3, x_val=torch.randn(8, 1, 10, generator=g), y_val=torch.arange(8) % 3)
    rnn = ModelSpec("rnn", depth=1, width=4, activation="tanh")
    cases = [
        (RunConfig(rnn, train_subset=50, batch_size=8), "train_subset 50 exceeds the 40 training samples"),
        (RunConfig(rnn, train_subset=20, batch_size=30), "batch_size 30 exceeds the 20 training samples"),
        (RunConfig(rnn, batch_size=41), "batch_size 41 exceeds the 40 training samples"),
        (RunConfig(ModelSpec("cnn", depth=5, width=2, final_width=2), batch_size=8), r"5 blocks \(4 poolings\) pool samples of shape \(1, 10\)"),
    ]
    for config, message in cases:
        assert re.search(message, config.misfit(toy)), config
        with pytest.raises(ValueError, match=message):
            train.train(config, toy)
    assert RunConfig(rnn, batch_size=8).misfit(toy) is None
