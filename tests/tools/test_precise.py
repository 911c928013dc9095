"""normlab.precise_batchnorm and adapt_batchnorm: exact pooled statistics, and nothing else in the model changes."""

import copy

import numpy as np
import pytest
import torch
from bn_models import resnet_style
from conftest import assert_rel
from torch import nn

import normlab
from normlab.tools._common import is_batchnorm

SIZES = [3, 7, 2, 5]  # unequal on purpose: averaging per-batch variances would be wrong


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), normlab.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5, momentum=None), nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6), nn.SyncBatchNorm(6),  # without a process group it is a plain batch norm
    )  # fmt: skip


def make_batches(sizes, shift=0.0, scale=1.0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [shift + scale * (10 + 3 * torch.randn(n, 3, 6, 6, generator=gen)) for n in sizes]


def inputs_of_each_bn(model, batches):
    """float64 NumPy arrays of what each batch norm of a Sequential sees, layer by layer, batch by batch."""
    seen = {}
    with torch.no_grad():
        for x in batches:
            for i, layer in enumerate(model):
                if is_batchnorm(layer):
                    seen.setdefault(i, []).append(x.double().numpy())
                x = layer(x)
    return seen


def population(arrays):
    """Mean and unbiased variance per channel (axis 1) of the concatenated batches."""
    data = np.moveaxis(np.concatenate(arrays), 1, 0).reshape(arrays[0].shape[1], -1)
    return data.mean(1), data.var(1, ddof=1)


def test_equals_statistics_of_the_concatenated_data():
    model = small_model()
    batches = make_batches(SIZES)
    expected = inputs_of_each_bn(copy.deepcopy(model).train(), batches)
    # a DataLoader-style (inputs, targets) pair is fed by its first element
    normlab.precise_batchnorm(model, [batches[0], (batches[1], torch.zeros(7)), *batches[2:]])
    for i, arrays in expected.items():
        mean, var = population(arrays)
        assert_rel(model[i].running_mean, mean, 1e-6, f"layer {i} mean")
        assert_rel(model[i].running_var, var, 1e-6, f"layer {i} var")
    # averaging the per-batch variances, as a running average does, is measurably different here
    naive = np.mean([np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).var(1, ddof=1) for a in expected[1]], axis=0)
    assert np.abs(naive - population(expected[1])[1]).max() > 1e-3 * population(expected[1])[1].max()


def test_batch_norms_anywhere_in_a_residual_network():
    model = resnet_style().train()
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(n, 3, 8, 8, generator=gen) for n in (2, 5, 3)]
    reference, seen = copy.deepcopy(model), {}
    for name, m in reference.named_modules():
        if is_batchnorm(m):
            m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0].double().numpy()))
    with torch.no_grad():
        for x in batches:
            reference(x)
    normlab.precise_batchnorm(model, iter(batches))  # a plain iterator: no len()
    assert len(seen["shared.bn1"]) == 2 * len(batches)  # the shared block runs twice per batch: both count
    for name, arrays in seen.items():
        mean, var = population(arrays)
        assert_rel(model.get_submodule(name).running_mean, mean, 1e-6, name)
        assert_rel(model.get_submodule(name).running_var, var, 1e-6, name)


def test_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), normlab.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(16, 4)).sum().backward()
    opt.step()
    model(torch.randn(16, 4)).sum().backward()  # leave gradients in place
    model.eval()
    model[1].train()  # mixed modes must come back exactly
    params = {k: (p, p.detach().clone(), p.grad.clone()) for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    opt_state = copy.deepcopy(opt.state_dict())
    batches = [torch.randn(n, 4) for n in SIZES]
    rng = torch.get_rng_state()

    normlab.precise_batchnorm(model, batches)

    assert not torch.equal(model[2].running_mean, buffers["2.running_mean"])
    assert torch.equal(model[2].num_batches_tracked, buffers["2.num_batches_tracked"])
    for k, (p, value, grad) in params.items():
        assert dict(model.named_parameters())[k] is p and torch.equal(p, value) and torch.equal(p.grad, grad), k
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)  # the dropout's draws were on a forked RNG
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], opt_state["state"][k]["momentum_buffer"])


def test_adapt_recovers_the_target_domain_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), normlab.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    normlab.precise_batchnorm(model, make_batches(SIZES))  # "trained" on the source domain
    source = model[1].running_mean.clone()
    target = make_batches(SIZES, shift=5.0, scale=2.0, seed=3)  # same kind of data, shifted and scaled

    normlab.adapt_batchnorm(model, target)

    # expected: what each batch norm sees at test time, dropout off, batch norms normalizing by batch statistics
    reference = copy.deepcopy(model).eval()
    reference[1].train(), reference[5].train()
    for i, arrays in inputs_of_each_bn(reference, target).items():
        mean, var = population(arrays)
        assert_rel(model[i].running_mean, mean, 1e-6, f"layer {i} mean")
        assert_rel(model[i].running_var, var, 1e-6, f"layer {i} var")
    assert (model[1].running_mean - source).abs().max() > 1.0  # the statistics did move to the target domain
    # and in eval the first batch norm (gamma 1, beta 0) now standardizes the target data
    with torch.no_grad():
        model.eval()
        y = model[1](model[0](torch.cat(target)))
    assert y.mean((0, 2, 3)).abs().max() < 1e-5
    assert_rel(y.var((0, 2, 3)), torch.ones(4), 1e-4)


def test_limits_and_errors(capsys):
    model = small_model()
    batches = make_batches(SIZES)
    first_two = copy.deepcopy(model)
    normlab.precise_batchnorm(first_two, batches[:2])
    normlab.precise_batchnorm(model, batches, num_batches=2, progress=True)
    assert torch.equal(model[1].running_var, first_two[1].running_var)
    err = capsys.readouterr().err
    assert "precise_batchnorm [" in err and "2/2" in err
    with pytest.raises(ValueError, match="batches is empty"):
        normlab.precise_batchnorm(model, [])
    with pytest.raises(ValueError, match="no batch norm with running statistics"):
        normlab.precise_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)), [])

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match=r"unused \(BatchNorm1d\(3\)\) saw fewer than 2 values"):
        normlab.precise_batchnorm(Branchy(), [torch.randn(4, 3)])

    bn = nn.BatchNorm1d(3)
    with pytest.raises(NotImplementedError, match=r"\(model\) \(BatchNorm1d\(3\)\) was called with more than its input"):
        normlab.precise_batchnorm(bn, [torch.randn(4, 3)], forward=lambda m, x: m(x, mask=None))


def test_dict_batches_need_forward_and_say_so():
    model = nn.Sequential(nn.Linear(4, 8), normlab.BatchNorm1d(8))
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.randn(16, 4, generator=gen), "label": torch.zeros(16)} for _ in range(2)]
    with pytest.raises(TypeError, match=r"the model raised TypeError on a batch that is a dict \(keys: image, label\); "
                       r"pass forward=lambda model, batch: model\(batch\['image'\]\)") as e:
        normlab.precise_batchnorm(model, batches)
    assert isinstance(e.value.__cause__, TypeError)  # torch's own error, kept as the cause
    normlab.precise_batchnorm(model, batches, forward=lambda model, batch: model(batch["image"]))
    z = model[0](torch.cat([b["image"] for b in batches])).detach()
    assert torch.allclose(model[1].running_mean, z.mean(0), atol=1e-5)

    class TakesDicts(nn.Module):  # a model that does take the dict as it comes needs no forward=
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, batch):
            return self.body(batch["image"])

    normlab.precise_batchnorm(TakesDicts(), batches)
