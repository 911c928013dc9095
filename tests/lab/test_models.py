"""Model specs: the networks they build, layer by layer, and their errors."""

import pytest
import torch
from torch import nn

import normlab
from normlab.lab.models import NORMS, RNN, TIME_NORMS, ModelSpec, ShiftingNoise, TimeStepBatchNorm, as_dict, build, macs, torch_calls

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


def test_torch_calls_count_every_step_and_leave_the_model_alone():
    # a GRU makes the same calls at every time step: the count is linear in the length
    rnn = ModelSpec("rnn", depth=1, width=8, activation="tanh", norm="bn")
    c10, c20, c30 = (torch_calls(build(rnn, (1, n), 10), (1, n)) for n in (10, 20, 30))
    assert c30 - c20 == c20 - c10 > 0
    mlp = build(ModelSpec("mlp", 3, 16, "relu", "bn"), (1, 40), 10).eval()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    assert torch_calls(mlp, (1, 40)) > torch_calls(build(ModelSpec("mlp", 3, 16, "relu"), (1, 40), 10), (1, 40))
    assert not mlp.training
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


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


def test_the_normalizations_of_the_table():
    mlp = {n: build(ModelSpec("mlp", 1, 8, "relu", n), (1, 12), 3)[2] for n in ("gn", "ln", "renorm", "ghost")}
    cnn = {n: build(ModelSpec("cnn", 1, 8, "relu", n, final_width=8), (1, 12), 3)[1] for n in ("gn", "ln", "renorm")}
    assert type(mlp["gn"]) is normlab.nn.GroupNorm and mlp["gn"].num_groups == 4
    assert type(mlp["ln"]) is normlab.nn.LayerNorm and mlp["ln"].normalized_shape == (8,)
    # in a CNN, "layer norm" is Wu & He's: each sample over all its channels and positions, per-channel affine
    assert type(cnn["ln"]) is normlab.nn.GroupNorm and cnn["ln"].num_groups == 1
    x = torch.randn(5, 8, 12)
    torch.testing.assert_close(cnn["ln"](x), torch.nn.functional.group_norm(x, 1, eps=1e-5))
    assert cnn["gn"].num_groups == 4
    for renorm in (mlp["renorm"], cnn["renorm"]):
        assert type(renorm) is normlab.nn.BatchRenorm1d and renorm.limits(0) == (1.0, 0.0)
        assert renorm.limits(800) == (3.0, 5.0)  # the lab's schedule: full limits by step 800
    assert type(mlp["ghost"]) is normlab.nn.GhostBatchNorm and mlp["ghost"].virtual_batch_size == 16


def test_mlp_dropout_after_each_hidden_layer():
    model = build(ModelSpec("mlp", 2, 8, "relu", "bn", dropout=0.5), (1, 12), 3)
    assert kinds(model) == ["Flatten"] + ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert {m.p for m in model if isinstance(m, nn.Dropout)} == {0.5}


def test_init_scale_multiplies_the_default_weights():
    for spec in (ModelSpec("mlp", 2, 8, "relu", "bn"), ModelSpec("cnn", 2, 4, "relu", "bn", final_width=4)):
        torch.manual_seed(0)
        default = build(spec, (1, 12), 3)
        torch.manual_seed(0)
        scaled = build(ModelSpec(**{**spec.__dict__, "init_scale": 10.0}), (1, 12), 3)
        for (name, a), (_, b) in zip(default.named_parameters(), scaled.named_parameters()):
            weight_of_a_map = name.endswith("weight") and isinstance(default.get_submodule(name[:-7]), (nn.Linear, nn.Conv1d))
            torch.testing.assert_close(b, a * 10 if weight_of_a_map else a, msg=name)  # biases and BN's gamma stay
    with pytest.raises(ValueError, match="init_scale must be positive"):
        ModelSpec(init_scale=0)


# --- issue 6: noise after the normalization, the recurrent model, the momentum ------------


def test_noise_follows_the_normalization_or_the_linear_map():
    noisy = build(ModelSpec("mlp", 2, 8, "relu", "bn", noise=True), (1, 40), 10)
    assert kinds(noisy) == ["Flatten"] + ["Linear", "BatchNorm1d", "ShiftingNoise", "ReLU"] * 2 + ["Linear"]
    plain = build(ModelSpec("mlp", 2, 8, "relu", "none", noise=True), (1, 40), 10)
    assert kinds(plain) == ["Flatten"] + ["Linear", "ShiftingNoise", "ReLU"] * 2 + ["Linear"]
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Linear))  # no normalization: biases stay
    conv = build(ModelSpec("cnn", 2, 4, "relu", "bn", noise=True, final_width=4), (1, 12), 3)
    assert sum(isinstance(m, ShiftingNoise) for m in conv) == 4 and conv(torch.randn(5, 1, 12)).shape == (5, 3)


def test_shifting_noise_moves_each_channel_every_step_and_is_the_identity_at_inference():
    torch.manual_seed(0)
    noise = ShiftingNoise(6)
    x = torch.randn(4000, 6)
    first, second = noise(x), noise(x)
    # per channel, the map x -> scale * x + shift changes between calls: a new mean and spread each step
    mean_shift = (first - x).mean(0) - (second - x).mean(0)
    assert mean_shift.abs().max() > 0.1
    assert ((first - x).mean(0).abs() <= 0.5 + 0.05).all()  # |shift mean| <= 0.5, up to sampling error
    # averaged over many steps the noise is centred: E[scale] = 1, E[shift] = 0
    y = torch.ones(1, 6)
    mean = torch.stack([noise(y) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, y, atol=0.05)
    noise.eval()
    assert torch.equal(noise(x), x)
    torch.manual_seed(1)
    a = ShiftingNoise(6)(x)
    torch.manual_seed(1)
    assert torch.equal(ShiftingNoise(6)(x), a)  # from the global RNG: deterministic given the seed


def test_rnn_without_normalization_is_torchs_gru():
    spec = ModelSpec("rnn", depth=2, width=8, activation="tanh", norm="none")
    torch.manual_seed(0)
    model = build(spec, (3, 11), 5)
    gru = nn.GRU(3, 8, num_layers=2, batch_first=True)
    with torch.no_grad():
        for i in range(2):
            getattr(gru, f"weight_ih_l{i}").copy_(model.inputs[i].weight)
            getattr(gru, f"bias_ih_l{i}").copy_(model.inputs[i].bias)
            getattr(gru, f"weight_hh_l{i}").copy_(model.recurrent[i].weight)
            getattr(gru, f"bias_hh_l{i}").copy_(model.recurrent[i].bias)
    x = torch.randn(6, 3, 11)
    out, _ = gru(x.transpose(1, 2))
    torch.testing.assert_close(model(x), model.classifier(out[:, -1]))


@pytest.mark.parametrize("norm, kind", [("bn", "BatchNorm1d"), ("ln", "LayerNorm"), ("bn_step", "TimeStepBatchNorm")])
def test_rnn_normalizes_the_recurrent_preactivations(norm, kind):
    model = build(ModelSpec("rnn", 1, 8, "tanh", norm), (1, 40), 10)
    assert [type(m).__name__ for m in model.norms] == [kind]
    assert model.recurrent[0].bias is None and model.inputs[0].bias is not None
    x = torch.randn(16, 1, 40)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(torch.randn(3, 1, 80)).shape == (3, 10)  # longer sequences at inference


def test_time_step_batch_norm():
    torch.manual_seed(0)
    bn = TimeStepBatchNorm(4, steps=3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 3.0]))
    xs = [torch.randn(32, 4) * (t + 1) + 3 * t for t in range(3)]
    for t, x in enumerate(xs):  # training: the batch's own statistics at each step, the shared affine map
        expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5) * bn.weight + bn.bias
        torch.testing.assert_close(bn(x, t), expected)
    for t, x in enumerate(xs):  # each step's running statistics saw only that step
        torch.testing.assert_close(bn.statistics[t].running_mean, 0.1 * x.mean(0))
    bn.eval()
    x = torch.randn(5, 4)
    last = bn.statistics[2]
    expected = (x - last.running_mean) / torch.sqrt(last.running_var + 1e-5) * bn.weight + bn.bias
    torch.testing.assert_close(bn(x, 7), expected)  # beyond the steps it was built for: the last step's
    bn.train()
    with pytest.raises(ValueError, match=r"TimeStepBatchNorm\(4\): has statistics for 3 time steps, got step 3"):
        bn(x, 3)


def test_norm_momentum_reaches_every_batch_norm():
    for momentum in (None, 0.01):
        model = build(ModelSpec("mlp", 2, 8, "relu", "bn", norm_momentum=momentum), (1, 40), 10)
        assert [m.momentum for m in model if isinstance(m, normlab.BatchNorm1d)] == [momentum] * 2
        rnn = build(ModelSpec("rnn", 1, 8, "tanh", "bn_step", norm_momentum=momentum), (1, 5), 10)
        assert {m.momentum for m in rnn.modules() if isinstance(m, normlab.BatchNorm1d)} == {momentum}


def test_as_dict_is_what_json_holds():
    d = as_dict(ModelSpec(noise=True, norm_momentum=None))
    assert d["noise"] is True and d["norm_momentum"] is None and ModelSpec(**d) == ModelSpec(noise=True, norm_momentum=None)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"norm": "bn_step"}, "norm must be one of"),  # per-step statistics only in an rnn
        ({"norm_momentum": 1.5}, "norm_momentum"),
        ({"kind": "rnn", "noise": True}, "noise is for kind"),
    ],
)
def test_bad_specs_issue_6(fields, message):
    with pytest.raises(ValueError, match=f"ModelSpec: .*{message}"):
        ModelSpec(**fields)


def test_rnn_needs_sequences():
    assert set(TIME_NORMS) == {"bn_step"}
    with pytest.raises(ValueError, match=r"an rnn reads samples of shape \(C, L\)"):
        build(ModelSpec("rnn"), (3, 8, 8), 10)
    with pytest.raises(ValueError, match=r"RNN: expected an \(N, C, L\) input"):
        RNN(ModelSpec("rnn", width=4), 1, 5, 2)(torch.randn(2, 5))
