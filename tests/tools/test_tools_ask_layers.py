"""Every tool on every normlab layer kind, after a conv: the tools ask the layer what it is (its
inference map, what follows it, its frozen and synchronized forms, whether it uses batch
statistics), so BatchNormAct keeps its activation through each of them, and each gives the model's
output back. And the conversion defects: a module used twice in one parent, in-place
ABN's scale when folding, a Linear over the last axis of a 3-D input, precise statistics of a
frozen layer."""

import copy
import warnings

import pytest
import torch
from torch import nn

import normlab
from conftest import assert_rel

BATCH_NORMS = {  # name -> layer for 4 channels after a conv
    "BatchNorm2d": lambda: normlab.BatchNorm2d(4),
    "BatchRenorm2d": lambda: normlab.BatchRenorm2d(4, warmup_steps=0, rmax_full_at=0, dmax_full_at=0),
    "GhostBatchNorm": lambda: normlab.GhostBatchNorm(4, virtual_batch_size=2),
    "SyncBatchNorm": lambda: normlab.SyncBatchNorm(4),
    "BatchNormAct": lambda: normlab.BatchNormAct(4, "relu"),
    "BatchNormAct-abn": lambda: normlab.BatchNormAct(4, "leaky_relu", negative_slope=0.1, inplace_abn=True),
    "FrozenBatchNorm": lambda: normlab.FrozenBatchNorm(4),
    "MeanOnlyBatchNorm": lambda: normlab.MeanOnlyBatchNorm(4),
}
OTHER_NORMS = {
    "InstanceNorm2d": lambda: normlab.InstanceNorm2d(4, affine=True, track_running_stats=True),
    "LayerNorm": lambda: normlab.LayerNorm([4, 5, 5]),
    "GroupNorm": lambda: normlab.GroupNorm(2, 4),
    "RMSNorm": lambda: normlab.RMSNorm([4, 5, 5]),
}
KINDS = {**BATCH_NORMS, **OTHER_NORMS}


def model(kind, seed=0):
    """conv -> layer -> ReLU, the layer with non-trivial statistics and parameters (weights of both signs)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), KINDS[kind](), nn.ReLU())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net[1].state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) if name in ("weight", "bias", "running_mean")
                        else torch.rand(t.shape, generator=gen) + 0.5)
    return net


def x(seed=1):
    return 2 * torch.randn(6, 3, 7, 7, generator=torch.Generator().manual_seed(seed)) + 1


@pytest.mark.parametrize("kind", KINDS)
def test_freeze_batchnorm(kind):
    net = model(kind).eval()
    expected = net(x())
    out = normlab.freeze_batchnorm(copy.deepcopy(net)).train()
    if kind in BATCH_NORMS:
        assert isinstance(out[1], normlab.FrozenBatchNorm)
        assert not list(out[1].parameters())
        if kind.startswith("BatchNormAct"):
            assert out[1].activation == net[1].activation  # the activation kept
    else:
        assert type(out[1]) is type(net[1])
    assert_rel(out(x()) if kind in BATCH_NORMS else out.eval()(x()), expected, 1e-5, "frozen, in train mode")


@pytest.mark.parametrize("kind", KINDS)
def test_fold_batchnorm(kind):
    net = model(kind).eval()
    result = normlab.fold_batchnorm(net)
    if kind in BATCH_NORMS:
        assert result.folded == [("0", "1")], (result.affine, result.kept)
        if kind.startswith("BatchNormAct"):
            assert type(result.model[1]) in (nn.ReLU, nn.LeakyReLU)  # what follows the map stays
    else:
        assert result.folded == [] and type(result.model[1]) is type(net[1])
    with torch.no_grad():
        assert_rel(result.model(x()), net(x()), 1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_convert_sync_batchnorm(kind, training):
    net = model(kind).train(training)
    ref = copy.deepcopy(net)
    out = normlab.convert_sync_batchnorm(net)
    layer = out[1]
    expected_type = {
        "BatchNorm2d": normlab.SyncBatchNorm, "SyncBatchNorm": normlab.SyncBatchNorm,
        "BatchRenorm2d": normlab.SyncBatchRenorm, "BatchNormAct": normlab.nn.sync.SyncBatchNormAct,
        "BatchNormAct-abn": normlab.nn.sync.SyncBatchNormAct,
    }.get(kind, type(ref[1]))  # ghost (local by design), frozen, mean-only and the others stay
    assert type(layer) is expected_type
    assert_rel(out(x()), ref(x()), 1e-6, "outside a process group: the same layer")
    for (k, a), b in zip(out.state_dict().items(), ref.state_dict().values()):
        assert_rel(a, b, 1e-6, k)


@pytest.mark.parametrize("kind", KINDS)
def test_convert_to_torch_and_back(kind):
    net = model(kind).eval()
    expected = net(x())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        there = normlab.convert(copy.deepcopy(net), to="torch")
    torch_has_it = kind in ("BatchNorm2d", "SyncBatchNorm", "InstanceNorm2d", "LayerNorm", "GroupNorm", "RMSNorm")
    if torch_has_it:
        assert type(there[1]).__module__.startswith("torch.nn") and not caught
        back = normlab.convert(there)
        assert type(back[1]) is type(net[1])
    else:  # torch has no such layer: it stays normlab's, and the warning says so
        assert type(there[1]) is type(net[1])
        assert any("torch has no such layer" in str(w.message) for w in caught)
        back = there
    assert_rel(back(x()), expected, 1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_precise_batchnorm(kind):
    net = model(kind)
    batches = [x(seed) for seed in range(3)]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    if kind not in BATCH_NORMS or kind == "FrozenBatchNorm":
        with pytest.raises(ValueError, match="no batch norm with running statistics"):
            normlab.precise_batchnorm(net, batches)
        return
    normlab.precise_batchnorm(net, batches)
    seen = torch.cat([net[0](b) for b in batches]).detach()
    assert_rel(net[1].running_mean, seen.mean((0, 2, 3)), 1e-5, "running_mean")
    if net[1].running_var is not None:
        assert_rel(net[1].running_var, seen.transpose(0, 1).reshape(4, -1).var(1), 1e-5, "running_var")
    assert torch.equal(net[1].num_batches_tracked, before["1.num_batches_tracked"])


# --- conversion defects ------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["convert", "freeze_batchnorm", "convert_sync_batchnorm"])
def test_a_module_used_twice_in_one_parent_is_converted_at_both_places(tool):
    bn = nn.BatchNorm1d(3)
    net = nn.Sequential(bn, nn.ReLU(), bn).eval()
    out = getattr(normlab, tool)(net)
    assert out[0] is out[2] and out[0] is not bn, "one module, converted once, in both places"


def test_fold_keeps_inplace_abns_scale():
    """In-place ABN scales by |weight| + eps: at weight 1e-3 (eps 1e-2) ignoring it is off by 1e-2."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), normlab.BatchNormAct(4, "identity", eps=1e-2, inplace_abn=True)).eval()
    with torch.no_grad():
        net[1].weight.fill_(-1e-3)
    folded = normlab.fold_batchnorm(net).model
    with torch.no_grad():
        assert_rel(folded(x()), net(x()), 1e-5)


def test_fold_checks_the_axis_a_linear_gives_its_batch_norm():
    """A Linear over the last axis of (N, L, F) followed by BatchNorm1d(L) with L == F: the features are
    not the batch norm's channels. With an example input the fold sees it and leaves a ChannelAffine;
    without one it folds and checks every call, raising rather than computing something else."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 5), normlab.BatchNorm1d(5)).eval()
    with torch.no_grad():
        net[1].running_mean.normal_(), net[1].running_var.uniform_(0.5, 2)
    tokens = torch.randn(4, 5, 5)
    result = normlab.fold_batchnorm(net, tokens)
    assert result.folded == [] and "3-D outputs on the example input" in result.affine[0][1]
    with torch.no_grad():
        assert_rel(result.model(tokens), net(tokens), 1e-5)
    blind = normlab.fold_batchnorm(net)
    assert blind.folded == [("0", "1")]
    vectors = torch.randn(4, 5)
    with torch.no_grad():
        assert_rel(blind.model(vectors), net(vectors), 1e-5)
        with pytest.raises(RuntimeError, match="folded 1 into 0 for 2-D .* gives a 3-D output"):
            blind.model(tokens)
    assert normlab.fold_batchnorm(net, vectors).folded == [("0", "1")]


def test_precise_batchnorm_leaves_frozen_statistics_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), normlab.BatchNorm2d(4), nn.Conv2d(4, 4, 1), normlab.BatchNorm2d(4))
    net[1].freeze("statistics")
    frozen_before = net[1].running_mean.clone()
    normlab.precise_batchnorm(net, [x(0), x(1)])
    assert torch.equal(net[1].running_mean, frozen_before)
    assert not torch.equal(net[3].running_mean, torch.zeros(4))


def test_swa_update_bn_refuses_to_reset_frozen_statistics():
    """torch.optim.swa_utils.update_bn resets every batch norm's statistics and recomputes them in training
    mode; a frozen layer would keep the reset values, so it refuses, naming itself."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), normlab.BatchNorm2d(4))
    net[1].freeze("statistics")
    with pytest.raises(RuntimeError, match=r"BatchNorm2d\(4\): its statistics are frozen"):
        torch.optim.swa_utils.update_bn([x()], net)
