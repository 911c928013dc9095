"""normlab.doctor: each finding on a model that has the problem and not on one that has not; the model is left as it was."""

import copy

import pytest
import torch
from torch import nn

import normlab

X = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))


def mlp(bias=False, dropout=None, momentum=0.1, data=X):
    """Linear -> [Dropout] -> BN -> ReLU -> Linear, its running statistics computed on ``data``."""
    torch.manual_seed(0)
    layers = [nn.Linear(10, 16, bias=bias)] + ([nn.Dropout(dropout)] if dropout is not None else [])
    layers += [normlab.BatchNorm1d(16, momentum=momentum), nn.ReLU(), nn.Linear(16, 2)]
    model = nn.Sequential(*layers)
    normlab.precise_batchnorm(model, [data])
    return model


def codes(findings):
    return [(f.code, f.layer) for f in findings]


def test_a_healthy_model_has_no_findings():
    assert normlab.doctor(mlp().eval(), X, evaluating=True) == []
    assert normlab.doctor(mlp(), X) == []


def test_bn_training_mode():
    model = mlp()
    assert codes(normlab.doctor(model, X, evaluating=True)) == [("bn-training-mode", "(model)")]
    assert normlab.doctor(model, X, evaluating=False) == []
    model.eval()
    model[1].train()  # e.g. set back by a freeze helper
    found = normlab.doctor(model, X, evaluating=True)
    assert codes(found) == [("bn-training-mode", "1")] and "model.eval()" in found[0].fix


def test_small_batch():
    found = normlab.doctor(mlp(), X[:4])
    assert ("small-batch", "1") in codes(found)
    assert "4 sample(s), 4 value(s) per channel" in found[[f.code for f in found].index("small-batch")].message
    images = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    assert "small-batch" in [f.code for f in normlab.doctor(images, torch.randn(4, 3, 10, 10))]  # 256 values, 4 samples
    assert "small-batch" not in [f.code for f in normlab.doctor(images, torch.randn(8, 3, 10, 10))]
    # a frozen batch norm uses no batch statistics: a small batch is no problem for it
    assert "small-batch" not in [f.code for f in normlab.doctor(normlab.freeze_batchnorm(images), torch.randn(4, 3, 10, 10))]
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), normlab.BatchNorm2d(4))
    frozen[1].freeze("statistics")
    assert "small-batch" not in [f.code for f in normlab.doctor(frozen, torch.randn(4, 3, 10, 10))]


def test_bias_before_bn():
    found = normlab.doctor(mlp(bias=True), X)
    assert codes(found) == [("bias-before-bn", "0")] and "bias=False" in found[0].fix
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert codes(normlab.doctor(conv, torch.randn(8, 3, 6, 6))) == [("bias-before-bn", "0")]
    # a Linear over the last axis of (N, L, F) is not per channel of the BN over L: its bias is not wasted
    seq = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(3))
    assert normlab.doctor(seq, torch.randn(16, 3, 5)) == []


def test_bn_after_dropout():
    found = normlab.doctor(mlp(dropout=0.3), X)
    assert codes(found) == [("bn-after-dropout", "2")] and "Li et al. 2019" in found[0].message
    assert normlab.doctor(mlp(dropout=0.0), X) == []  # p = 0 is no dropout
    inplace = nn.Sequential(nn.Linear(10, 16, bias=False), nn.Dropout(0.3, inplace=True), nn.BatchNorm1d(16))
    normlab.precise_batchnorm(inplace, [X])
    assert codes(normlab.doctor(inplace, X)) == [("bn-after-dropout", "2")]  # not mistaken for bias-before-bn


def test_stats_mismatch():
    model = mlp()
    found = normlab.doctor(model, 3 * X + 5)
    assert codes(found) == [("stats-mismatch", "1")] and "precise_batchnorm" in found[0].fix
    assert normlab.doctor(model, X) == []
    fresh = nn.Sequential(nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16))
    assert normlab.doctor(fresh, 3 * X + 20) == []  # before training there is nothing to compare ...
    found = normlab.doctor(fresh.eval(), 3 * X + 20, evaluating=True)  # ... but evaluating with it is a problem
    assert codes(found) == [("stats-mismatch", "1")] and "never updated" in found[0].message


def test_dead_gamma():
    model = mlp()
    with torch.no_grad():
        model[1].weight[:3] = 0
    found = normlab.doctor(model, X)
    assert codes(found) == [("dead-gamma", "1")] and "3 of 16 channels" in found[0].message


def test_recurrent_bn():
    class RNN(nn.Module):
        def __init__(self, per_step):
            super().__init__()
            self.cell = nn.Linear(8, 8, bias=False)
            self.bns = nn.ModuleList([nn.BatchNorm1d(8) for _ in range(3)]) if per_step else None
            self.bn = nn.BatchNorm1d(8)

        def forward(self, x):  # x: (N, T, 8)
            h = torch.zeros_like(x[:, 0])
            for t in range(x.shape[1]):
                bn = self.bns[t] if self.bns is not None else self.bn
                h = torch.tanh(bn(self.cell(h + x[:, t])))
            return h

    x = torch.randn(32, 3, 8)
    found = normlab.doctor(RNN(per_step=False), x)
    assert codes(found) == [("recurrent-bn", "bn")] and "called 3 times" in found[0].message
    assert normlab.doctor(RNN(per_step=True), x) == []


@pytest.mark.parametrize("momentum,found", [(0.99, True), (0.9, True), (0.5, True), (0.1, False), (None, False)])
def test_keras_momentum(momentum, found):
    findings = normlab.doctor(mlp(momentum=momentum), X)
    assert codes(findings) == ([("keras-momentum", "1")] if found else [])
    if momentum == 0.99:
        assert "momentum=0.01" in findings[0].fix


def test_state_is_restored():
    model = mlp(bias=True, dropout=0.5, momentum=0.9)
    model.eval()
    model[2].train()
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    findings = normlab.doctor(model, 3 * X[:4] + 1, evaluating=True)
    assert {f.code for f in findings} == {
        "bn-training-mode", "keras-momentum", "bn-after-dropout", "small-batch", "stats-mismatch"
    }  # fmt: skip
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert str(findings[0]).startswith("[bn-training-mode] 2: ") and "\n    fix: " in str(findings[0])


# --- a batch of one, and any error of the model's own forward, are findings ------------------------


def doctor_leaving_it_as_it_was(model, batch):
    """The doctor's findings, checking that the model's state, its modes and the RNG come back as they were."""
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    result = normlab.doctor(model, batch)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    return result


@pytest.mark.parametrize("layer", [nn.BatchNorm1d, normlab.BatchNorm1d])
@pytest.mark.parametrize("track", [True, False])
def test_batch_of_one_is_a_finding_not_a_crash(layer, track):
    model = nn.Sequential(nn.Linear(20, 64, bias=False), layer(64, track_running_stats=track), nn.ReLU(), nn.Linear(64, 1))
    found = doctor_leaving_it_as_it_was(model, torch.randn(1, 20))
    assert codes(found) == [("batch-of-one", "1")]
    assert "Expected more than 1 value per channel when training" in found[0].message and "drop_last=True" in found[0].fix
    assert ("forward pass stopped there" in found[0].message) == (not track)  # without running statistics, nothing to go on with
    assert normlab.doctor(model, torch.randn(2, 20)) != [] and "batch-of-one" not in {f.code for f in normlab.doctor(model, torch.randn(2, 20))}


def test_batch_of_one_after_convolutions_and_in_ghost_batches():
    # the image layers see 196 values per channel; the head's BatchNorm1d one
    cnn = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10, bias=False), nn.BatchNorm1d(10)
    )  # fmt: skip
    assert codes(normlab.doctor(cnn, torch.randn(1, 3, 16, 16))) == [("batch-of-one", "5"), ("small-batch", "1")]
    # 33 samples in virtual batches of 32: the last one has a single sample
    ghost = nn.Sequential(nn.Linear(10, 16, bias=False), normlab.GhostBatchNorm(16, virtual_batch_size=32))
    found = normlab.doctor(ghost, torch.randn(33, 10))
    assert codes(found) == [("batch-of-one", "1")] and "last virtual batch" in found[0].message
    assert normlab.doctor(ghost, torch.randn(64, 10)) == []
    # a layer told what to do with one value per channel does not fail
    handled = nn.Sequential(nn.Linear(10, 16, bias=False), normlab.BatchNorm1d(16, one_value_per_channel="running_stats"))
    assert "batch-of-one" not in {f.code for f in normlab.doctor(handled, torch.randn(1, 10))}


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16, momentum=0.9))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.stem(x).reshape(len(x), 4, -1))  # a bug: 4 features reach a Linear of 16


def test_an_error_of_the_models_forward_is_a_finding():
    model = Broken()
    found = doctor_leaving_it_as_it_was(model, torch.randn(32, 10))
    # what was found before the failure is kept, and the failure says where it happened
    assert codes(found) == [("keras-momentum", "stem.1"), ("forward-error", "head")]
    assert "RuntimeError" in found[1].message and "mat1 and mat2" in found[1].message
    found = normlab.doctor(mlp(), torch.randn(32, 7))  # an input of the wrong size
    assert codes(found) == [("forward-error", "0")] and "(32x7 and 10x16)" in found[0].message
    found = normlab.doctor(mlp(), {"x": X})  # a dict batch, without forward=
    assert codes(found) == [("forward-error", "0")] and "forward=lambda model, batch: model(batch['x'])" in found[0].fix
    assert normlab.doctor(mlp(), {"x": X}, forward=lambda model, batch: model(batch["x"])) == []


# --- dropout feeding a batch norm, on every path -----------------------------------------------------


class Residual(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.f, self.drop, self.bn = nn.Linear(16, 16, bias=False), dropout, nn.BatchNorm1d(16)

    def forward(self, x):
        return self.bn(x + self.drop(self.f(x)))


class Functional(nn.Module):
    def __init__(self, p=0.3, training=True):
        super().__init__()
        self.f, self.bn, self.p, self.training_flag = nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), p, training

    def forward(self, x):
        return self.bn(torch.relu(torch.nn.functional.dropout(self.f(x), self.p, training=self.training_flag)))


def lin(bias=False):
    return nn.Linear(16, 16, bias=bias)


DROPOUT_PATHS = {  # model, input, the finding's layer, words of its message
    "direct": (lambda: nn.Sequential(lin(), nn.Dropout(0.3), nn.BatchNorm1d(16)), (32, 16), "2", "directly after 1 (Dropout(p=0.3))"),
    "through a Linear": (lambda: nn.Sequential(nn.Dropout(0.5), lin(), nn.BatchNorm1d(16)), (32, 16), "2", "downstream of 0"),
    "through a ReLU": (lambda: nn.Sequential(lin(), nn.Dropout(0.5), nn.ReLU(), nn.BatchNorm1d(16)), (32, 16), "3", "downstream of 1"),
    "in a residual sum": (lambda: Residual(nn.Dropout(0.2)), (32, 16), "bn", "downstream of drop"),
    "functional": (lambda: Functional(), (32, 16), "bn", "F.dropout(p=0.3) in (model)"),
    "Dropout2d, then a Flatten": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Dropout2d(0.2), nn.Flatten(), nn.BatchNorm1d(64)),
        (32, 3, 6, 6), "3", "downstream of 1 (Dropout2d(p=0.2))",
    ),
    "in place": (lambda: nn.Sequential(lin(bias=True), nn.Dropout(0.3, inplace=True), nn.BatchNorm1d(16)), (32, 16), "2", "directly after 1"),
    "a later batch norm": (
        lambda: nn.Sequential(lin(), nn.Dropout(0.3), nn.BatchNorm1d(16), lin(), nn.BatchNorm1d(16)),
        (32, 16), "2", "2 batch norms depend on it: 2, 4",
    ),
}


@pytest.mark.parametrize("path", list(DROPOUT_PATHS))
def test_dropout_feeding_a_batch_norm_on_every_path(path):
    build, shape, layer, words = DROPOUT_PATHS[path]
    found = normlab.doctor(build(), torch.randn(shape))
    assert codes(found) == [("bn-after-dropout", layer)], found  # in place: not mistaken for bias-before-bn either
    assert words in found[0].message and "Li et al. 2019" in found[0].message


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.Sequential(lin(), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2)),  # after the last BN
        lambda: nn.Sequential(lin(), nn.Dropout(0.0), nn.BatchNorm1d(16)),  # p = 0 is no dropout
        lambda: Functional(training=False),  # F.dropout switched off
        lambda: Residual(nn.Identity()),
    ],
    ids=["after the last batch norm", "p=0", "F.dropout(training=False)", "no dropout"],
)
def test_no_dropout_finding_without_a_dropout_upstream(build):
    assert normlab.doctor(build(), torch.randn(32, 16)) == []


def test_bias_after_an_inplace_operation_is_not_wasted():
    # Linear -> in-place ReLU -> BN: the ReLU returns the Linear's output tensor itself, but after the ReLU the bias matters
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(inplace=True), nn.BatchNorm1d(16))
    assert normlab.doctor(model, torch.randn(32, 16)) == []


# --- the other new checks: each on a model with the mistake and one without ------------------------


def test_stats_not_frozen_by_requires_grad():
    model = nn.Sequential(nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    for p in model[1].parameters():
        p.requires_grad_(False)  # the usual attempt at freezing a batch norm for fine-tuning
    found = normlab.doctor(model, X)
    assert codes(found) == [("stats-not-frozen", "1")] and "freeze_batchnorm" in found[0].fix
    model[1].eval()  # frozen as it should be: eval after model.train()
    assert normlab.doctor(model, X) == []
    assert normlab.doctor(normlab.freeze_batchnorm(mlp()), X) == []
    frozen = mlp()
    frozen[1].freeze("affine")  # normlab's freeze of the affine parameters only: on purpose
    assert normlab.doctor(frozen, X) == []
    assert normlab.doctor(mlp(), X) == []


@pytest.mark.parametrize("length", [7, 16])
def test_channels_last(length):
    """BatchNorm1d(16) on (N, L, 16) token features: dim 1 is the sequence."""
    model = nn.Sequential(nn.Embedding(100, 16), nn.BatchNorm1d(16), nn.Linear(16, 2))
    tokens = torch.randint(0, 100, (32, length))
    found = doctor_leaving_it_as_it_was(model, tokens)
    assert codes(found) == [("channels-last", "1")], found
    assert f"(32, {length}, 16)" in found[0].message and "transpose(1, 2)" in found[0].fix
    assert "from 0: Embedding" in found[0].message  # with L == C only where it comes from tells
    # a sequence in the (N, C, L) layout BatchNorm1d expects, even with L == C
    conv = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16))
    assert normlab.doctor(conv, torch.randn(32, 16, length)) == []
    # a Linear over the last axis of (N, C, L) with out_features != C is fine (test_bias_before_bn)


def test_no_running_stats_when_evaluating():
    model = nn.Sequential(nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16, track_running_stats=False)).eval()
    found = normlab.doctor(model, X, evaluating=True)
    assert codes(found) == [("no-running-stats", "1")] and "track_running_stats=True" in found[0].fix
    assert normlab.doctor(model, X) == []  # training with batch statistics only is a choice
    assert normlab.doctor(mlp().eval(), X, evaluating=True) == []


def test_weight_decay_on_norm_parameters():
    model = mlp()
    found = normlab.doctor(model, X, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4))
    assert codes(found) == [("norm-weight-decay", "1")] and "weight_decay=0.0005" in found[0].message
    assert "normlab.param_groups" in found[0].fix
    assert normlab.doctor(model, X, optimizer=torch.optim.SGD(normlab.param_groups(model, 5e-4), lr=0.1)) == []
    assert normlab.doctor(model, X, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)) == []  # no decay at all
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        normlab.doctor(model, X, optimizer=[p for p in model.parameters()])


def test_ghost_batch_norm_with_small_virtual_batches():
    ghost = nn.Sequential(nn.Linear(10, 16, bias=False), normlab.GhostBatchNorm(16, virtual_batch_size=2))
    found = normlab.doctor(ghost, torch.randn(64, 10))
    assert codes(found) == [("small-virtual-batch", "1")] and "2 sample(s)" in found[0].message
    assert "virtual_batch_size" in found[0].fix
    ok = nn.Sequential(nn.Linear(10, 16, bias=False), normlab.GhostBatchNorm(16, virtual_batch_size=32))
    assert normlab.doctor(ok, torch.randn(64, 10)) == []
    # a batch smaller than the virtual batch is plain batch norm: the batch is what is small
    assert codes(normlab.doctor(ok, torch.randn(4, 10))) == [("small-batch", "1")]


def test_dead_gamma_is_not_reported_before_training():
    untrained = nn.Sequential(nn.Linear(10, 16, bias=False), nn.BatchNorm1d(16))
    nn.init.zeros_(untrained[1].weight)  # a zero-initialized residual branch, on purpose
    assert normlab.doctor(untrained, X) == []
