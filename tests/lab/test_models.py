"""Model specs: the networks they build, layer by layer, and their errors."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
            assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in model)


@pytest.mark.parametrize("norm", ["bn", "renorm", "ghost"])
def test_non_finite_batch_statistics_end_a_run(norm):
    """The layers' default skips a non-finite update; the lab's models raise it, which ends the run as
    diverged (train.py), and the stacked runner's widened layers let it through to the per-member check."""
    from normlab.lab import stacked
    model = build(ModelSpec("mlp", 2, 8, "relu", norm=norm), (1, 12), 3).train()
    norms = [m for m in model.modules() if hasattr(m, "non_finite")]
    assert norms and all(m.non_finite == "raise" for m in norms)
    x = torch.randn(32, 1, 12)
    x[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        model(x)
    widened = stacked._widened(norms[0], 2, [norms[0], norms[0]], num_features=2 * norms[0].num_features)
    assert widened.non_finite == "propagate"


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


# --- noise after the normalization, the recurrent model, the momentum ------------


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


# --- the source experiments' networks, as their sources build them ------------------------------

from dataset_files import write_cifar_batch  # noqa: E402

from normlab.lab import data  # noqa: E402
from normlab.lab.models import HEADS, KERAS, loss, penalty, predict  # noqa: E402
from normlab.lab.train import OPTIMIZERS, RunConfig, train  # noqa: E402

# The 3-minute tutorial's Keras network ("Batch Normalization", a dense network with L2 on its kernels)
TUTORIAL = ModelSpec(
    "mlp", depth=2, width=(64, 32), activation="relu", norm="bn", dropout=(0.3, 0.2),
    head="sigmoid", kernel_l2=0.01, **KERAS,
)


def seed_cnn(activation, norm):
    """The Keras CNN of the blog post reviewing Ioffe and Szegedy (CIFAR-100)."""
    return ModelSpec("cnn", depth=5, width=60, final_width=100, activation=activation, norm=norm, dropout=0.15, **KERAS)


def vgg11(norm="bn", **changes):
    """VGG-11 (Simonyan & Zisserman's configuration A) for 32x32 images: 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M."""
    return ModelSpec("cnn", depth=5, width=(64, 128, 256, 512, 512), convs=(1, 1, 2, 2, 2), pool_last=True,
                     activation="relu", norm=norm, **changes)


def test_keras_defaults():
    assert KERAS == {"init": "glorot", "norm_momentum": 0.01, "norm_eps": 1e-3, "bias_before_norm": True}


def test_the_tutorials_dense_network_is_keras_summary_to_the_parameter():
    """Its model.summary(): dense_1 1,344, batch_norm_1 256, dense_2 2,080, batch_norm_2 128, output_layer 33;
    3,841 in all, 3,649 trainable, 192 non-trainable (the moving means and variances)."""
    model = build(TUTORIAL, (20,), 2)
    assert kinds(model) == ["Flatten"] + ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.3, 0.2]
    table = normlab.summary(model, (20,))
    assert [r.params for r in table.rows if r.params] == [1344, 256, 2080, 128, 33]
    assert (table.total, table.trainable, table.non_trainable) == (3841, 3649, 192)
    assert model(torch.randn(5, 20)).shape == (5, 1)  # one output: the logit of class 1


def test_keras_initialization_and_batch_norm_conventions():
    torch.manual_seed(0)
    model = build(ModelSpec("mlp", depth=1, width=400, activation="relu", norm="bn", **KERAS), (1, 300), 10)
    hidden, bn, out = model[1], model[2], model[-1]
    for layer in (hidden, out):  # Glorot uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out)); zero biases
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(w.std().item() / (bound / 3**0.5) - 1) < 0.02
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))  # kept before the BN, as Keras's Dense has it
    assert (bn.momentum, bn.eps) == (0.01, 1e-3)
    conv = build(ModelSpec("cnn", depth=1, width=8, final_width=8, norm="bn", **KERAS), (3, 6, 6), 2)[0]
    bound = (6 / (3 * 9 + 8 * 9)) ** 0.5  # Keras's fans for a 3x3 kernel: channels times 9
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound


def test_the_binary_head_and_the_kernel_penalty():
    torch.manual_seed(0)
    model = build(TUTORIAL, (20,), 2).eval()
    x, y = torch.rand(16, 20), torch.randint(0, 2, (16,))
    z = model(x)
    # binary cross-entropy of the sigmoid output, and 0.01 * (|W1|^2 + |W2|^2): the classifier's kernel is free
    expected = F.binary_cross_entropy(torch.sigmoid(z[:, 0]), y.float())
    torch.testing.assert_close(loss(z, y), expected)
    kernels = [model[1].weight, model[5].weight]
    torch.testing.assert_close(penalty(model, TUTORIAL), 0.01 * sum(w.square().sum() for w in kernels))
    assert torch.equal(predict(z), (torch.sigmoid(z[:, 0]) > 0.5).long())
    assert penalty(model, ModelSpec()) == 0
    assert set(HEADS) == {"softmax", "sigmoid"}
    with pytest.raises(ValueError, match="a sigmoid head classifies 2 classes, the data has 10"):
        build(TUTORIAL, (20,), 10)


def test_the_blog_posts_cifar100_cnn():
    """5 blocks of two 3x3 'same' convolutions (60 filters, 100 in the last), max-pooling and dropout 0.15 after
    each block but the last, Flatten, Dense(100, softmax); Keras's layers keep their biases before the BN."""
    convs = [(3, 60)] + [(60, 60)] * 7 + [(60, 100), (100, 100)]
    conv_params = sum(i * 9 * o + o for i, o in convs)
    dense = 100 * 2 * 2 * 100 + 100  # 32 px pooled 4 times: 2x2x100 features
    for act in ("sigmoid", "relu"):
        for norm in ("bn", "none"):
            model = build(seed_cnn(act, norm), (3, 32, 32), 100)
            layers = [m for m in model if isinstance(m, nn.Conv2d)]
            assert [(c.in_channels, c.out_channels) for c in layers] == convs
            assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in layers)
            assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 4
            assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.15] * 4
            assert sum(isinstance(m, ACTIVATIONS_BY_NAME[act]) for m in model) == 10
            bns = [m for m in model if isinstance(m, normlab.BatchNorm2d)]
            assert len(bns) == (10 if norm == "bn" else 0) and all((b.momentum, b.eps) == (0.01, 1e-3) for b in bns)
            table = normlab.summary(model, (3, 32, 32))
            bn_params = 4 * (8 * 60 + 2 * 100) if norm == "bn" else 0  # gamma, beta, moving mean and variance
            assert table.total == conv_params + dense + bn_params == (415_920 if norm == "bn" else 413_200)
            assert table.non_trainable == bn_params // 2
            assert model[-1].in_features == 400 and model[-1].out_features == 100


ACTIVATIONS_BY_NAME = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


@pytest.mark.parametrize(
    "spec, conv_bias, params",
    [
        # 9,220,480 in the convolutions (torchvision's vgg11 features), a Linear(512, 10) classifier
        (vgg11("none"), True, 9_220_480 + 5_130),
        (vgg11("bn"), False, 9_220_480 - 2_752 + 2 * 2_752 + 5_130),  # BN's shift replaces the 2,752 biases
        (vgg11("bn", noise=True), False, 9_220_480 - 2_752 + 2 * 2_752 + 5_130),  # the noise has no parameters
        (vgg11("bn", bias_before_norm=True), True, 9_220_480 + 2 * 2_752 + 5_130),  # as torchvision's vgg11_bn keeps them
    ],
)
def test_vgg11_with_bn_noisy_bn_and_none(spec, conv_bias, params):
    """Santurkar et al.'s comparison on CIFAR-10: a standard VGG with BN, with noisy BN and without."""
    model = build(spec, (3, 32, 32), 10)
    config = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    seen = ["M" if isinstance(m, nn.MaxPool2d) else m.out_channels for m in model if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    assert seen == config
    assert all(isinstance(m.bias, torch.Tensor) == conv_bias for m in model if isinstance(m, nn.Conv2d))
    assert sum(isinstance(m, normlab.BatchNorm2d) for m in model) == (8 if spec.norm == "bn" else 0)
    assert sum(isinstance(m, ShiftingNoise) for m in model) == (8 if spec.noise else 0)
    if spec.noise:  # the noise right after each batch norm
        assert all(isinstance(model[i + 1], ShiftingNoise) for i, m in enumerate(model) if isinstance(m, normlab.BatchNorm2d))
    assert (model[-1].in_features, model[-1].out_features) == (512, 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_vgg_with_hidden_dense_layers():
    """VGG-A with two 512-unit linear layers before the classifier (what CIFAR reproductions of Santurkar et al. use)."""
    model = build(vgg11("bn", dense=(512, 512)), (3, 32, 32), 10)
    assert kinds(model)[-8:] == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(512, 512), (512, 512), (512, 10)]


def test_per_layer_widths_and_rates():
    model = build(ModelSpec("mlp", depth=3, width=(30, 20, 10), dropout=(0.5, 0.0, 0.25), activation="relu"), (1, 12), 4)
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(12, 30), (30, 20), (20, 10), (10, 4)]
    assert kinds(model) == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear", "ReLU", "Dropout", "Linear"]
    cnn = build(ModelSpec("cnn", depth=3, width=(4, 8, 16), convs=(1, 2, 3), dropout=(0.1, 0.2), activation="relu"), (1, 16), 3)
    assert [m.out_channels for m in cnn if isinstance(m, nn.Conv1d)] == [4, 8, 8, 16, 16, 16]
    assert [m.p for m in cnn if isinstance(m, nn.Dropout)] == [0.1, 0.2]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"width": (8, 8)}, r"width has 2 values for 3 layers"),
        ({"kind": "cnn", "dropout": (0.1,) * 3}, r"dropout has 3 values for 2 poolings"),
        ({"kind": "cnn", "convs": (2, 2)}, r"convs has 2 values for 3 blocks"),
        ({"width": (8, 0, 8)}, r"width must hold positive integers"),
        ({"dropout": (0.1, 1.0, 0.1)}, r"dropout must hold rates in \[0, 1\)"),
        ({"convs": 3}, r"convs, pool_last and dense are for kind 'cnn'"),
        ({"kind": "rnn", "width": (8, 8, 8)}, r"an rnn has one width for all its layers"),
        ({"kind": "cnn", "width": (4, 4, 4), "final_width": 8}, r"with one width per block, the last one is the tuple's"),
        ({"head": "softplus"}, r"head must be one of \['sigmoid', 'softmax'\]"),
        ({"kernel_l2": -0.1}, r"kernel_l2 must be non-negative"),
        ({"init": "kaiming"}, r"init must be one of \['glorot', 'he', 'lecun', 'torch'\]"),
        ({"norm_eps": 0.0}, r"norm_eps must be positive and finite"),
        ({"norm_eps": float("nan")}, r"norm_eps must be positive and finite"),
    ],
)
def test_bad_specs_of_the_new_fields(fields, message):
    with pytest.raises(ValueError, match=f"ModelSpec: {message}"):
        ModelSpec(**fields)


def test_misfit_says_why_before_anything_is_built():
    cases = [
        (ModelSpec("rnn", width=4), (1, 8, 8), 10, r"an rnn reads samples of shape \(C, L\) as L steps of C values, got \(1, 8, 8\)"),
        (ModelSpec("cnn", depth=5, width=4, final_width=4), (1, 8, 8), 10, r"5 blocks \(4 poolings\) pool samples of shape \(1, 8, 8\) to nothing"),
        (vgg11(), (3, 16, 16), 10, r"5 blocks \(5 poolings\) pool samples of shape \(3, 16, 16\) to nothing"),
        (ModelSpec("cnn", width=4, final_width=4), (2, 4, 4, 4), 10, r"a cnn needs samples of shape \(C, L\) or \(C, H, W\)"),
        (TUTORIAL, (20,), 3, r"a sigmoid head classifies 2 classes, the data has 3"),
    ]
    for spec, shape, classes, message in cases:
        assert re.search(message, spec.misfit(shape, classes)), spec
        with pytest.raises(ValueError, match=message):
            build(spec, shape, classes)
    assert vgg11().misfit((3, 32, 32), 10) is None and TUTORIAL.misfit((20,), 2) is None


def test_a_claims_own_measure_is_known_without_importing_the_claims_first():
    """A results.json names measures the claim modules register (inference_latency): reading its
    configs needs no import of the claims beforehand (a fresh process, where nothing imported them)."""
    code = ("from normlab.lab.train import RunConfig; from normlab.lab.models import ModelSpec; "
            "print(RunConfig(ModelSpec(), measures=('inference_latency',)).measures)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "('inference_latency',)", done.stderr
    with pytest.raises(ValueError, match=r"unknown measures \['no_such_measure'\]"):
        RunConfig(ModelSpec(), measures=("no_such_measure",))


def test_new_fields_stay_out_of_cache_keys_at_their_defaults(monkeypatch):
    """Every config that existed before the source fields keeps its key: the keys of docs/report's runs,
    written by the code before them, are recomputed from their configs (at the result version they
    were written with: a later version changes every key on purpose)."""
    from normlab.lab import train

    docs = pathlib.Path(__file__).resolve().parents[2] / "docs"
    for report in ("report", "report-full"):
        doc = json.loads((docs / report / "results.json").read_text())
        monkeypatch.setattr(train, "RESULT_VERSION", doc["result_version"])
        runs = doc["runs"]
        assert runs and all(RunConfig.from_dict(r["config"]).key() == key for key, r in runs.items())
    plain = ModelSpec()
    assert set(as_dict(plain)) == {"kind", "depth", "width", "activation", "norm", "placement", "dropout",
                                    "final_width", "init_scale", "noise", "norm_momentum"}
    for changes in ({"head": "sigmoid"}, {"kernel_l2": 0.01}, {"init": "glorot"}, {"norm_eps": 1e-3},
                    {"bias_before_norm": True}, {"kind": "cnn", "convs": 1}, {"kind": "cnn", "pool_last": True},
                    {"kind": "cnn", "dense": (8,)}):
        spec = ModelSpec(**changes)
        assert set(as_dict(spec)) - set(as_dict(plain)) <= set(changes) and as_dict(spec) != as_dict(ModelSpec(kind=spec.kind))
        config = RunConfig(spec)
        assert config.key() != RunConfig(ModelSpec(kind=spec.kind)).key()
        back = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert back == config and hash(back.model) == hash(spec)  # lists from JSON back to tuples


def test_rmsprop_is_keras_rmsprop():
    """Keras's RMSprop with its defaults: v = 0.9 v + 0.1 g^2 from v = 0, w -= lr g / (sqrt(v) + 1e-7)."""
    torch.manual_seed(0)
    w = torch.randn(50, requires_grad=True)
    config = RunConfig(ModelSpec(), optimizer="rmsprop", lr=1e-3)
    optimizer = OPTIMIZERS["rmsprop"]([w], config)
    expected, v = w.detach().clone().double(), torch.zeros(50, dtype=torch.float64)
    for _ in range(3):
        g = torch.randn(50)
        w.grad = g.clone()
        optimizer.step()
        v = 0.9 * v + 0.1 * g.double() ** 2
        expected -= 1e-3 * g.double() / (v.sqrt() + 1e-7)
    torch.testing.assert_close(w.detach().double(), expected, rtol=1e-6, atol=1e-9)


def _cifar(folder, fmt, n_train, n_test, classes=None):
    """A small CIFAR-10 or CIFAR-100 folder in the exact format; labels below ``classes`` when given."""
    folder.mkdir()
    key = b"labels" if fmt == "cifar-10" else b"fine_labels"
    rng = np.random.default_rng(0)

    def labels(n):
        return None if classes is None else rng.integers(0, classes, n).tolist()

    if fmt == "cifar-10":
        for i in range(1, 6):
            write_cifar_batch(folder / f"data_batch_{i}", n_train // 5, key, seed=i, labels=labels(n_train // 5))
        write_cifar_batch(folder / "test_batch", n_test, key, seed=9, labels=labels(n_test))
    else:
        write_cifar_batch(folder / "train", n_train, key, seed=1, labels=labels(n_train))
        write_cifar_batch(folder / "test", n_test, key, seed=2, labels=labels(n_test))
    return str(folder)


def _trains(config, folder):
    ds = data.load(folder)
    torch.manual_seed(config.seed)
    before = build(config.model, ds.sample_shape, ds.classes).state_dict()
    result = train(config, ds)
    assert result["diverged"] is None and len(result["train_loss"]) == 2
    assert all(np.isfinite(v) for v in result["train_loss"][1:]) and 0 <= result["final_test_accuracy"] <= 1
    return before, result


@pytest.mark.slow
def test_the_blog_posts_network_trains_on_cifar100_files(tmp_path):
    """Its setup as written (RMSprop, batch 80), a few steps on CIFAR-100 files written here."""
    folder = _cifar(tmp_path / "cifar-100-python", "cifar-100", 100, 10)
    for act, norm in (("sigmoid", "none"), ("relu", "bn")):
        config = RunConfig(seed_cnn(act, norm), data=folder, optimizer="rmsprop", lr=1e-3, batch_size=80, steps=2, eval_every=2)
        _trains(config, folder)


@pytest.mark.slow
def test_vgg11_trains_on_cifar10_files(tmp_path):
    folder = _cifar(tmp_path / "cifar-10-batches-py", "cifar-10", 20, 4)
    for norm, noise in (("bn", False), ("bn", True), ("none", False)):
        config = RunConfig(vgg11(norm, noise=noise), data=folder, optimizer="sgd", lr=0.1, momentum=0.9, batch_size=8, steps=2, eval_every=2)
        _trains(config, folder)


def test_the_tutorials_network_trains_on_binary_cifar10_files(tmp_path):
    """The binary head on CIFAR-10 files holding two classes; its logged loss is binary cross-entropy plus the L2 penalty."""
    folder = _cifar(tmp_path / "cifar-10-batches-py", "cifar-10", 40, 10, classes=2)
    config = RunConfig(TUTORIAL, data=folder, optimizer="adam", lr=1e-3, batch_size=16, steps=2, eval_every=2)
    _, result = _trains(config, folder)
    assert result["classes"] == 2
    # the same two steps by hand: Keras's binary_crossentropy of the sigmoid output plus 0.01 |W|^2 per hidden kernel
    ds = data.load(folder)
    torch.manual_seed(0)
    model = build(TUTORIAL, ds.sample_shape, 2).train()
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(3072, 64), (64, 32), (32, 1)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(2):
        idx = order[16 * step : 16 * (step + 1)]
        p = torch.sigmoid(model(ds.x_train[idx])[:, 0])
        kernels = [m.weight for m in model if isinstance(m, nn.Linear)][:2]
        objective = F.binary_cross_entropy(p, ds.y_train[idx].float()) + 0.01 * sum(w.square().sum() for w in kernels)
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
        losses.append(objective.item())
    assert result["train_loss"][1] == pytest.approx(np.mean(losses), rel=1e-5)


@pytest.mark.parametrize("init, variance", [
    ("torch", lambda fan_in, fan_out: 1 / (3 * fan_in)),  # torch's own: U(+-1/sqrt(fan_in))
    ("lecun", lambda fan_in, fan_out: 1 / fan_in),
    ("glorot", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),  # U(+-sqrt(6/(fan_in+fan_out))): bound^2 / 3
    ("he", lambda fan_in, fan_out: 2 / fan_in),
])
def test_init_schemes_draw_the_weights_their_papers_define(init, variance):
    """Each scheme's weight variance from its formula, on a wide layer (400 x 300) and a convolution
    (fan_in = channels x kernel); biases start at 0 except under torch's own; init_scale multiplies after."""
    torch.manual_seed(0)
    model = build(ModelSpec("mlp", 1, 300, "relu", init=init), (1, 400), 200)
    hidden, classifier = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer, (fan_in, fan_out) in ((hidden, (400, 300)), (classifier, (300, 200))):
        w = layer.weight.detach().double()
        assert float(w.var()) == pytest.approx(variance(fan_in, fan_out), rel=0.03)
        assert abs(float(w.mean())) < 0.003
        if init == "torch":
            bound = float(layer.bias.detach().abs().max())
            assert 0.5 / fan_in**0.5 < bound <= 1 / fan_in**0.5
        else:
            assert not layer.bias.detach().any()
    if init in ("lecun", "he"):  # normal: about 4.6% of draws beyond two standard deviations, none for a uniform
        beyond = (hidden.weight.abs() > 2 * variance(400, 300) ** 0.5).double().mean()
        assert float(beyond) == pytest.approx(0.0455, abs=0.005)
    conv = [m for m in build(ModelSpec("cnn", 1, 64, "relu", init=init, final_width=64), (32, 40), 10).modules() if isinstance(m, nn.Conv1d)][1]
    assert float(conv.weight.detach().double().var()) == pytest.approx(variance(64 * 3, 64 * 3), rel=0.1)
    torch.manual_seed(0)
    scaled = build(ModelSpec("mlp", 1, 300, "relu", init=init, init_scale=10.0), (1, 400), 200)
    assert torch.allclose(scaled[1].weight, 10 * hidden.weight)

