"""The vectorized runner: a member's result does not depend on its group (bit for bit), and equals
its separate run (the plain loop, train_separately) up to rounding, for every kind of network."""

import numpy as np
import pytest
import torch
from torch import nn

from normlab.lab import stacked, train
from normlab.lab.data import Dataset
from normlab.lab.models import KERAS, ModelSpec, build
from normlab.lab.train import RunConfig

# Odd widths and batches: a member's slice is then no multiple of any vector width, which is
# where a kernel's scalar tail would make its numbers depend on its place in the group.
SPECS = {
    "mlp": ModelSpec("mlp", 2, 13, "sigmoid"),
    "mlp-bn": ModelSpec("mlp", 2, 13, "sigmoid", "bn"),
    "mlp-gn": ModelSpec("mlp", 2, 12, "relu", "gn"),
    "mlp-ln": ModelSpec("mlp", 2, 13, "tanh", "ln"),
    "mlp-renorm": ModelSpec("mlp", 2, 13, "relu", "renorm"),
    "mlp-ghost": ModelSpec("mlp", 2, 13, "relu", "ghost"),
    "mlp-after": ModelSpec("mlp", 2, 13, "sigmoid", "bn", placement="after"),
    "mlp-dropout": ModelSpec("mlp", 2, 13, "relu", "bn", dropout=0.3),
    "mlp-noise": ModelSpec("mlp", 2, 13, "relu", "bn", noise=True),
    "cnn-bn": ModelSpec("cnn", 2, 7, "sigmoid", "bn", dropout=0.15, final_width=5),
    "cnn-noise": ModelSpec("cnn", 2, 7, "relu", "none", noise=True, final_width=5),
    "rnn": ModelSpec("rnn", 1, 7, "tanh"),
    "rnn-bn": ModelSpec("rnn", 1, 7, "tanh", "bn"),
    "rnn-bn_step": ModelSpec("rnn", 1, 7, "tanh", "bn_step"),
    "rnn-ln": ModelSpec("rnn", 1, 7, "tanh", "ln"),
    # the source experiments' networks: Keras's conventions, a binary head, L2 on the hidden kernels
    "mlp-keras": ModelSpec("mlp", 2, (13, 11), "relu", "bn", dropout=(0.3, 0.2), head="sigmoid", kernel_l2=0.01, **KERAS),
    "cnn-vgg": ModelSpec("cnn", 2, (5, 7), "relu", "bn", convs=(1, 2), pool_last=True, dense=(9,), kernel_l2=1e-3, noise=True),
}
BATCH = {"mlp-ghost": 48}  # a whole number of ghost batches (16)
CLASSES = {"mlp-keras": 2}
OPTIMIZER = {"mlp-keras": "rmsprop"}


def synthetic(shape=(1, 13), n=96, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, x_test = torch.randn(n, *shape, generator=g), torch.randn(37, *shape, generator=g)
    y, y_test = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (37,), generator=g)
    x_val, y_val = torch.randn(19, *shape, generator=g), torch.randint(0, classes, (19,), generator=g)
    return Dataset("synthetic", x, y, x_test, y_test, classes, x_val=x_val, y_val=y_val)


def config(name, **changes):
    spec = SPECS[name]
    extra = {"probes": ("last_activation_input",)} if spec.kind == "mlp" else {}
    c = RunConfig(spec, batch_size=BATCH.get(name, 21), steps=9, eval_every=4, seed=3, optimizer=OPTIMIZER.get(name, "adam"), lr=0.01, **extra)
    return c.but(**changes)


def without_timing(result):
    return {k: v for k, v in result.items() if k not in ("seconds", "group_size")}


@pytest.mark.parametrize("name", list(SPECS))
def test_a_member_does_not_depend_on_its_group(name):
    ds = synthetic(classes=CLASSES.get(name, 3))
    c = config(name)
    alone = without_timing(train.train(c, ds))
    others = [c.but(seed=s, model_init_scale=scale) for s, scale in ((0, 1.0), (7, 0.5), (11, 2.0), (12, 1.0))]
    for group, place in ((others[:2], 1), (others, 4), (others[1:3], 0)):
        members = list(group)
        members.insert(place, c)
        results = train.train_group(members, ds)
        assert without_timing(results[place]) == alone, f"{name}: member {place} of {len(members)} differs from its run alone"
        assert results[place]["group_size"] == len(members)
    assert alone["test_accuracy"] != without_timing(train.train(others[1], ds))["test_accuracy"]


def test_initialization_schemes_train_in_one_group():
    """Runs that differ in their initialization scheme stack too, each member as it trains alone."""
    ds = synthetic()
    runs = [config("mlp-bn", seed=s, model_init=init) for s in (0, 1) for init in ("torch", "lecun", "glorot", "he")]
    assert len({train.group_key(c) for c in runs}) == 1
    together = train.train_group(runs, ds)
    for c, r in zip(runs[:5:3], together[:5:3]):
        assert without_timing(r) == without_timing(train.train(c, ds))
    assert together[0]["test_accuracy"] != together[1]["test_accuracy"] or together[0]["train_loss"] != together[1]["train_loss"]


def close(a, b, what, rel=1e-4, abs_=1e-5):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=rel, atol=abs_, err_msg=what)


@pytest.mark.parametrize("name", list(SPECS))
def test_a_member_equals_its_separate_run_up_to_rounding(name):
    ds = synthetic(classes=CLASSES.get(name, 3))
    c = config(name)
    mine, plain = train.train(c, ds), train.train_separately(c, ds)
    assert mine["step"] == plain["step"] and mine["diverged"] is None and plain["diverged"] is None
    close(mine["train_loss"][1:], plain["train_loss"][1:], "train_loss")
    # accuracies count samples: one may flip on a rounding difference
    close(mine["test_accuracy"], plain["test_accuracy"], "test_accuracy", rel=0, abs_=1.5 / len(ds.y_test))
    close(mine["val_accuracy"], plain["val_accuracy"], "val_accuracy", rel=0, abs_=1.5 / len(ds.y_val))
    close(mine["final_train_accuracy"], plain["final_train_accuracy"], "train accuracy", rel=0, abs_=1.5 / len(ds.y_train))
    for probe in c.probes:
        close(mine["probes"][probe], plain["probes"][probe], probe, abs_=1e-4)


def test_measures_per_member_equal_the_separate_run():
    ds = synthetic()
    c = config("mlp-noise", measures=("ics", "smoothness", "gammas"), eval_every=3)
    group = train.train_group([c.but(seed=0), c], ds)[1]
    plain = train.train_separately(c, ds)
    for name in c.measures:
        assert group["measures"][name]["step"] == plain["measures"][name]["step"]
    for a, b in zip(group["measures"]["ics"]["value"], plain["measures"]["ics"]["value"]):
        close(a["l2"], b["l2"], "ics", rel=1e-3)
    for a, b in zip(group["measures"]["smoothness"]["value"], plain["measures"]["smoothness"]["value"]):
        close(a["beta"], b["beta"], "beta", rel=1e-3)
    close(group["measures"]["gammas"]["value"], plain["measures"]["gammas"]["value"], "gammas")


@pytest.mark.parametrize("trainable", ["norm", "random"])
def test_trainable_per_member(trainable):
    ds = synthetic((1, 16))
    c = RunConfig(ModelSpec("cnn", 2, 6, "relu", "bn", final_width=5), optimizer="adam", lr=0.01, batch_size=21, steps=6, eval_every=3, seed=2, trainable=trainable)
    alone = without_timing(train.train(c, ds))
    assert without_timing(train.train_group([c.but(seed=5), c], ds)[1]) == alone
    plain = train.train_separately(c, ds)
    close(alone["train_loss"][1:], plain["train_loss"][1:], "train_loss")


def test_images_and_2d_convolutions():
    ds = synthetic((3, 6, 6))
    c = RunConfig(ModelSpec("cnn", 2, 5, "relu", "bn", dropout=0.2, final_width=4), optimizer="adam", lr=0.01, batch_size=21, steps=6, eval_every=3, seed=1)
    alone = without_timing(train.train(c, ds))
    assert without_timing(train.train_group([c.but(seed=4), c.but(seed=9), c], ds)[2]) == alone
    close(alone["train_loss"][1:], train.train_separately(c, ds)["train_loss"][1:], "train_loss")


def test_a_diverging_member_ends_alone_and_changes_nobody():
    ds = synthetic()
    c = config("mlp-bn", optimizer="sgd", lr=1e9, steps=12, model_activation="relu")
    bad = c.but(model_init_scale=1e6)
    good = c.but(seed=8)
    results = train.train_group([good, bad], ds)
    assert without_timing(results[0]) == without_timing(train.train(good, ds))
    assert without_timing(results[1]) == without_timing(train.train(bad, ds))
    plain = train.train_separately(bad, ds)
    assert results[1]["diverged"]["step"] == plain["diverged"]["step"]
    assert ("not finite" in plain["diverged"]["reason"]) == ("not finite" in results[1]["diverged"]["reason"])
    assert results[1]["step"] == plain["step"] and results[1]["step"][-1] < results[1]["diverged"]["step"]
    assert results[1]["final_test_accuracy"] == pytest.approx(plain["final_test_accuracy"], abs=1.5 / len(ds.y_test))
    assert results[1]["final_val_accuracy"] == pytest.approx(plain["final_val_accuracy"], abs=1.5 / len(ds.y_val))


def test_members_go_back_into_plain_models():
    torch.manual_seed(0)
    members = [build(SPECS[n], (1, 13), 3) for n in ("rnn-bn_step", "rnn-bn_step")]
    net = stacked.stack(members)
    for k, m in enumerate(members):
        copy = build(SPECS["rnn-bn_step"], (1, 13), 3)
        stacked.load_member(net, k, 2, copy)
        assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), m.state_dict().values()))


def test_what_cannot_be_stacked():
    with pytest.raises(stacked.NotStackable, match="stride 1"):
        stacked.stack([nn.Conv1d(2, 3, 3, stride=2)] * 2)
    with pytest.raises(stacked.NotStackable, match="no stacked form of LSTM"):
        stacked.stack([nn.LSTM(2, 3)])
    with pytest.raises(ValueError, match="may differ only in their seed, model.init and model.init_scale"):
        train.train_group([config("mlp"), config("mlp", lr=0.5)], synthetic())
