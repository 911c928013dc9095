"""torch.func with batch norm: ``replace_all_batch_norm_modules_`` (every ``_BatchNorm`` made
to use batch statistics and keep none, what vmap over a training batch norm needs), and
``functional_call`` + ``vmap`` + ``grad`` as in torch's model-ensembling and per-sample-gradient
recipes: a stack of models evaluated at once, and per-sample gradients through a model in eval."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, stack_module_state, vmap

import normlab
from conftest import assert_rel
from interop_cases import BOTH, rand, randomize


def net(lib, seed=0, track_running_stats=True):
    torch.manual_seed(seed)
    return nn.Sequential(
        # no bias before a batch norm: its gradient would be 0 up to rounding
        nn.Conv2d(3, 4, 3, bias=False), lib.BatchNorm2d(4, track_running_stats=track_running_stats), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 4 * 3, 5, bias=False), lib.BatchNorm1d(5, track_running_stats=track_running_stats),
    )  # fmt: skip


# --- replace_all_batch_norm_modules_ -------------------------------------------------------------


@BOTH
def test_replace_all_batch_norm_modules_drops_the_running_statistics(lib):
    x = rand(6, 3, 6, 5)
    model = randomize(net(lib), x)
    replace_all_batch_norm_modules_(model)
    for bn in (model[1], model[5]):
        assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked is None
        assert not bn.track_running_stats
        assert "running_mean" not in bn.state_dict()
    model.eval()  # batch statistics now, in eval too
    expected = copy.deepcopy(model).train()(x)
    assert_rel(model(x), expected, 1e-6, "eval output with batch statistics")
    assert_rel(model[:2](x), F.batch_norm(model[0](x), None, None, model[1].weight, model[1].bias, True), 1e-5, "bn1")


@pytest.mark.parametrize(
    "make",
    [
        lambda: normlab.BatchRenorm2d(4),
        lambda: normlab.GhostBatchNorm(4, virtual_batch_size=3),
        lambda: normlab.SyncBatchNorm(4),
        lambda: normlab.BatchNormAct(4, "relu"),
    ],
    ids=["BatchRenorm2d", "GhostBatchNorm", "SyncBatchNorm", "BatchNormAct"],
)
def test_replace_all_batch_norm_modules_leaves_variants_working(make):
    """Without running statistics each variant normalizes with batch statistics (renormalization
    has no running statistics to correct towards: it is batch norm), in training and eval alike."""
    x = rand(6, 4, 5, 5)
    bn = make()
    replace_all_batch_norm_modules_(bn)
    assert bn.running_mean is None and not bn.track_running_stats
    reference = normlab.GhostBatchNorm(4, virtual_batch_size=3, track_running_stats=False) if isinstance(
        bn, normlab.GhostBatchNorm) else nn.BatchNorm2d(4, track_running_stats=False)  # fmt: skip
    expected = reference(x).relu() if isinstance(bn, normlab.BatchNormAct) else reference(x)
    assert_rel(bn(x), expected, 1e-5, "training output")
    assert_rel(bn.eval()(x), expected, 1e-5, "eval output")


# --- functional_call + vmap ----------------------------------------------------------------------


def ensemble(lib, n=3, track_running_stats=True):
    x = rand(6, 3, 6, 5)
    models = [net(lib, seed, track_running_stats) for seed in range(n)]
    if track_running_stats:
        models = [randomize(m, x) for m in models]
    return models


def call(base):
    return lambda params, buffers, x: functional_call(base, (params, buffers), (x,))


@BOTH
def test_vmap_over_an_ensemble_in_eval(lib):
    models = [m.eval() for m in ensemble(lib)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = rand(4, 3, 6, 5, seed=5)
    out = vmap(call(base), in_dims=(0, 0, None))(params, buffers, x)
    assert_rel(out, torch.stack([m(x) for m in models]), 1e-5, "ensemble outputs")


@BOTH
def test_vmap_over_an_ensemble_in_training_without_running_statistics(lib):
    """Each model normalizes its own minibatch with its batch statistics; the gradients of the
    stacked parameters are each model's own."""
    models = [m.train() for m in ensemble(lib, track_running_stats=False)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs, w = rand(3, 4, 3, 6, 5, seed=6), rand(4, 5, seed=10)  # w: a loss whose gradient is not ~0 through batch norm

    def loss(params, buffers, x):
        return (functional_call(base, (params, buffers), (x,)) * w).sum()

    out = vmap(call(base))(params, buffers, xs)
    assert_rel(out, torch.stack([m(x) for m, x in zip(models, xs)]), 1e-5, "ensemble outputs")
    grads = vmap(grad(loss))(params, buffers, xs)
    for i, (m, x) in enumerate(zip(models, xs)):
        m.zero_grad()
        (m(x) * w).sum().backward()
        for name, p in m.named_parameters():
            assert_rel(grads[name][i], p.grad, 1e-4, f"model {i}: grad of {name}")


@BOTH
def test_vmap_over_an_ensemble_in_training_with_running_statistics(lib):
    """vmap batches the in-place update of the stacked running statistics: each model's are
    updated as they would be by the model alone."""
    models = [m.train() for m in ensemble(lib)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = rand(3, 4, 3, 6, 5, seed=7)
    out = vmap(call(base))(params, buffers, xs)
    assert_rel(out, torch.stack([m(x) for m, x in zip(models, xs)]), 1e-5, "ensemble outputs")
    for name, stacked in buffers.items():
        expected = torch.stack([dict(m.named_buffers())[name] for m in models])
        assert_rel(stacked, expected, 0 if name.endswith("num_batches_tracked") else 1e-5, name)


@BOTH
def test_vmap_in_training_after_replace_all_batch_norm_modules(lib):
    """torch.func's recipe for batch norm under vmap: no running statistics at all."""
    models = [replace_all_batch_norm_modules_(m).train() for m in ensemble(lib)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = rand(3, 4, 3, 6, 5, seed=7)
    out = vmap(call(base))(params, buffers, xs)
    assert_rel(out, torch.stack([m(x) for m, x in zip(models, xs)]), 1e-5, "ensemble outputs")


@BOTH
def test_per_sample_gradients_through_batch_norm_in_eval(lib):
    """In eval a batch norm is an affine map per channel: each sample's gradient is its own."""
    model = randomize(net(lib), rand(6, 3, 6, 5)).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, target = rand(4, 3, 6, 5, seed=8), rand(4, 5, seed=9)

    def loss(params, x, t):
        return (functional_call(model, (params, buffers), (x[None],))[0] - t).square().sum()

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(len(x)):
        model.zero_grad()
        (model(x[i : i + 1])[0] - target[i]).square().sum().backward()
        for name, p in model.named_parameters():
            assert_rel(grads[name][i], p.grad, 1e-4, f"sample {i}: grad of {name}")
