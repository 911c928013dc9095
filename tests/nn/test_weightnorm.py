"""Weight norm against torch.nn.utils.parametrizations.weight_norm (same g, v, weights, outputs,
gradients and state_dict keys) on both dispatch paths; the paper's data-dependent
initialization; mean-only batch norm against its plain torch definition and torch's
running mean."""

import pytest
import torch
from torch import nn

import normlab
from conftest import assert_rel

torch_weight_norm = nn.utils.parametrizations.weight_norm


@pytest.mark.parametrize(
    "build,shape",
    [
        (lambda: nn.Linear(5, 4), (6, 5)),
        (lambda: nn.Conv2d(3, 4, 3), (2, 3, 5, 5)),
        (lambda: nn.Conv1d(3, 4, 2, bias=False), (2, 3, 6)),
    ],
    ids=["Linear", "Conv2d", "Conv1d"],
)
@pytest.mark.parametrize("dim", [0, 1, None, -1, -2])
def test_weight_norm_conforms_to_torch(backend, build, shape, dim):
    torch.manual_seed(0)
    theirs = torch_weight_norm(build(), dim=dim)
    ours = normlab.weight_norm(build(), dim=dim)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    g = ours.parametrizations.weight.original0
    assert g.shape == theirs.parametrizations.weight.original0.shape
    with torch.no_grad():  # a g other than ||v||, so that the weight is not v itself
        g.mul_(1.5)
        theirs.parametrizations.weight.original0.mul_(1.5)
    assert_rel(ours.weight, theirs.weight, 1e-6, "weight")
    x = torch.randn(shape)
    yo, yt = ours(x), theirs(x)
    dy = torch.randn(yt.shape)
    yo.backward(dy)
    yt.backward(dy)
    assert_rel(yo, yt, 1e-5, "output")
    for (name, po), pt in zip(ours.named_parameters(), theirs.parameters()):
        assert_rel(po.grad, pt.grad, 1e-5, f"{name} grad")


def test_applying_weight_norm_keeps_the_function_and_splits_length_from_direction():
    torch.manual_seed(1)
    layer = nn.Linear(4, 3)
    w = layer.weight.detach().clone()
    normlab.weight_norm(layer)
    g, v = layer.parametrizations.weight.original0, layer.parametrizations.weight.original1
    assert torch.equal(v, w) and g.shape == (3, 1)
    assert_rel(g.flatten(), w.norm(dim=1), 1e-6, "g = ||w|| per output unit")
    assert_rel(layer.weight, w, 1e-6, "weight unchanged")
    with torch.no_grad():
        v.mul_(7.0)  # only v's direction matters
    assert_rel(layer.weight, w, 1e-6, "weight independent of v's length")
    assert isinstance(layer.parametrizations.weight[0], normlab.WeightNorm)


def test_checkpoints_move_between_torch_and_normlab_and_old_keys_load(tmp_path):
    torch.manual_seed(2)
    theirs = torch_weight_norm(nn.Conv2d(2, 3, 3))
    torch.save(theirs.state_dict(), tmp_path / "ckpt.pt")
    ours = normlab.weight_norm(nn.Conv2d(2, 3, 3))
    ours.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    back = torch_weight_norm(nn.Conv2d(2, 3, 3))
    back.load_state_dict(ours.state_dict())
    for k, val in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], val), k
    # the keys of the older torch.nn.utils.weight_norm
    sd = theirs.state_dict()
    old = {"bias": sd["bias"], "weight_g": sd["parametrizations.weight.original0"],
           "weight_v": sd["parametrizations.weight.original1"]}
    fresh = normlab.weight_norm(nn.Conv2d(2, 3, 3))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.weight, theirs.weight)


def mlp():
    torch.manual_seed(3)
    return nn.Sequential(
        normlab.weight_norm(nn.Linear(6, 8)), nn.ReLU(), normlab.weight_norm(nn.Linear(8, 4)), nn.Tanh()
    )


def test_data_dependent_init_gives_zero_mean_unit_variance_pre_activations():
    model = mlp()
    x = 3 * torch.randn(64, 6) + 1
    assert normlab.data_dependent_init(model, x) == ["0", "2"]
    with torch.no_grad():
        t1 = model[0](x)
        t2 = model[2](model[1](t1))
    for t in (t1, t2):
        assert t.mean(0).abs().max() < 1e-5  # against a standard deviation of 1
        assert_rel(t.var(0, unbiased=False), torch.ones(t.shape[1]), 1e-5, "variance")
    # g and b are what the paper's formulas give on the un-initialized pre-activation
    g, v = model[0].parametrizations.weight.original0, model[0].parametrizations.weight.original1
    t = x @ (v / v.norm(dim=1, keepdim=True)).T
    assert_rel(g.flatten(), 1 / t.std(0, unbiased=False), 1e-5, "g = 1 / sigma")
    assert_rel(model[0].bias, -t.mean(0) / t.std(0, unbiased=False), 1e-5, "b = -mu / sigma")


def test_data_dependent_init_of_convolutions_is_per_output_channel():
    torch.manual_seed(4)
    model = nn.Sequential(normlab.weight_norm(nn.Conv2d(3, 5, 3)), nn.ReLU(), normlab.weight_norm(nn.Conv2d(5, 2, 1, bias=False)))
    x = torch.randn(8, 3, 6, 6)
    normlab.data_dependent_init(model, x)
    with torch.no_grad():
        t1 = model[0](x)
        t2 = model[2](model[1](t1))
    assert t1.mean((0, 2, 3)).abs().max() < 1e-5
    assert_rel(t1.var((0, 2, 3), unbiased=False), torch.ones(5), 1e-5, "conv 1 variance")
    assert_rel(t2.var((0, 2, 3), unbiased=False), torch.ones(2), 1e-5, "no bias: the scale only")


def test_a_layer_reached_twice_is_initialized_at_its_first_call():
    torch.manual_seed(5)
    layer = normlab.weight_norm(nn.Linear(4, 4))
    x = torch.randn(32, 4)
    normlab.data_dependent_init(nn.Sequential(layer, layer), x)
    with torch.no_grad():
        t = layer(x)
    assert_rel(t.var(0, unbiased=False), torch.ones(4), 1e-5)


def test_mean_only_batch_norm_conforms_to_its_definition_and_torchs_running_mean(backend):
    gen = torch.Generator().manual_seed(6)
    ours = normlab.MeanOnlyBatchNorm(3)
    with torch.no_grad():
        ours.bias.normal_(generator=gen)
    ref = nn.BatchNorm2d(3, affine=False)  # its running_mean follows the same rule
    bias_grad = torch.zeros(3)
    for step in range(3):
        x = (2 + 3 * torch.randn(4, 3, 5, 5, generator=gen)) * (step + 1)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo = ours(xo)
        yt = xt - xt.mean((0, 2, 3), keepdim=True) + ours.bias.detach().view(1, 3, 1, 1)
        ref(x)
        dy = torch.randn(x.shape, generator=gen)
        yo.backward(dy)
        yt.backward(dy)
        bias_grad += dy.sum((0, 2, 3))
        assert_rel(yo, yt, 1e-6, f"step {step} output")
        assert_rel(xo.grad, xt.grad, 1e-6, f"step {step} input grad")
    assert_rel(ours.bias.grad, bias_grad, 1e-6, "bias grad")
    assert_rel(ours.running_mean, ref.running_mean, 1e-6, "running_mean")
    assert ours.num_batches_tracked.item() == 3
    ours.eval()
    x = torch.randn(2, 3, 4, 4, generator=gen)
    assert_rel(ours(x), x - ours.running_mean.view(1, 3, 1, 1) + ours.bias.view(1, 3, 1, 1), 1e-6, "eval")


def test_mean_only_batch_norm_bias_gradient_and_state():
    bn = normlab.MeanOnlyBatchNorm(2)
    x = torch.randn(5, 2, 3)
    dy = torch.randn(5, 2, 3)
    bn(x).backward(dy)
    assert_rel(bn.bias.grad, dy.sum((0, 2)), 1e-6)
    assert list(bn.state_dict()) == ["bias", "running_mean", "num_batches_tracked"]
    assert bn.weight is None and bn.running_var is None
    assert list(normlab.MeanOnlyBatchNorm(2, bias=False, track_running_stats=False).state_dict()) == []
    bn.reset_parameters()
    assert torch.equal(bn.running_mean, torch.zeros(2)) and bn.num_batches_tracked.item() == 0


def test_mean_only_batch_norm_momentum_none_and_no_tracking():
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(10, 2, generator=gen) * (i + 1) + i for i in range(4)]
    cumulative = normlab.MeanOnlyBatchNorm(2, momentum=None)
    for b in batches:
        cumulative(b)
    assert_rel(cumulative.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), 1e-6)
    untracked = normlab.MeanOnlyBatchNorm(2, track_running_stats=False).eval()
    x = batches[0]
    assert_rel(untracked(x), x - x.mean(0), 1e-6, "batch mean in eval without running statistics")


@pytest.mark.parametrize("forced,native_calls", [(None, 1), ("native", 1), ("normlab", 0)])
def test_weight_norm_runs_the_chosen_backend(monkeypatch, forced, native_calls):
    calls = []
    real = normlab.backends.TABLE["weight_norm"]["native"]
    monkeypatch.setitem(normlab.backends.TABLE["weight_norm"], "native", lambda *a: calls.append(1) or real(*a))
    layer = normlab.weight_norm(nn.Linear(3, 2))
    with normlab.use_backend(forced):
        layer(torch.randn(4, 3))
    assert len(calls) == native_calls
