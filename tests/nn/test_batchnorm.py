"""BatchNorm1d/2d/3d against torch.nn's: outputs, gradients, running statistics and eval
outputs to 1e-5 relative over a grid, on both dispatch paths; state_dict compatibility."""

import itertools

import pytest
import torch

import normlab
from conftest import assert_rel, assert_repr_like_torch

CASES = [  # (normlab class, torch class, input shape, channels-last format or None)
    (normlab.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5), None),
    (normlab.BatchNorm1d, torch.nn.BatchNorm1d, (4, 5, 7), None),
    (normlab.BatchNorm2d, torch.nn.BatchNorm2d, (4, 5, 6, 3), None),
    (normlab.BatchNorm2d, torch.nn.BatchNorm2d, (4, 5, 6, 3), torch.channels_last),
    (normlab.BatchNorm3d, torch.nn.BatchNorm3d, (2, 5, 3, 4, 2), None),
    (normlab.BatchNorm3d, torch.nn.BatchNorm3d, (2, 5, 3, 4, 2), torch.channels_last_3d),
]


def pair(ours_cls, torch_cls, **kwargs):
    theirs = torch_cls(5, **kwargs)
    ours = ours_cls(5, **kwargs)
    if theirs.affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].__name__}-{c[2]}-{c[3]}")
@pytest.mark.parametrize(
    "momentum,affine,track", list(itertools.product([0.1, 0.7, None], [True, False], [True, False]))
)
def test_conformance_with_torch(backend, case, momentum, affine, track):
    ours_cls, torch_cls, shape, fmt = case
    ours, theirs = pair(ours_cls, torch_cls, momentum=momentum, affine=affine, track_running_stats=track)
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        x = (2 + 3 * torch.randn(shape, generator=gen)) * (step + 1)
        if fmt is not None:
            x = x.to(memory_format=fmt)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        dy = torch.randn(shape, generator=gen)
        yo.backward(dy)
        yt.backward(dy)
        assert_rel(yo, yt, 1e-5, f"step {step} output")
        assert_rel(xo.grad, xt.grad, 1e-5, f"step {step} input grad")
        if fmt is not None:
            assert yo.is_contiguous(memory_format=fmt)
    if affine:
        assert_rel(ours.weight.grad, theirs.weight.grad, 1e-5, "weight grad")
        assert_rel(ours.bias.grad, theirs.bias.grad, 1e-5, "bias grad")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert_rel(a, b, 1e-5, name)
    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen)
    assert_rel(ours(x), theirs(x), 1e-5, "eval output")


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: c[0].__name__)
def test_state_dict_moves_both_ways(case, tmp_path):
    ours_cls, torch_cls, shape, _ = case
    theirs = torch_cls(5).train()
    for _ in range(2):
        theirs(torch.randn(shape))
    ours = ours_cls(5)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict()) == [
        "weight", "bias", "running_mean", "running_var", "num_batches_tracked"
    ]
    back = torch_cls(5)
    back.load_state_dict(ours.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # through a file, the way checkpoints travel, with the state_dict version kept
    torch.save(torch.nn.Sequential(theirs).state_dict(), tmp_path / "ckpt.pt")
    model = torch.nn.Sequential(ours_cls(5))
    model.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    assert torch.equal(model[0].running_var, theirs.running_var)
    assert ours._version == theirs._version


@pytest.mark.parametrize("version", [1, None])
def test_checkpoint_without_num_batches_tracked_keeps_the_count_as_torch_does(version):
    """torch's own loading (PyTorch's test_batchnorm_load_state_dict): a checkpoint from before
    num_batches_tracked existed leaves the layer's count, which momentum=None and the batch
    renormalization schedule read."""
    sd = torch.nn.BatchNorm2d(3).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata = {"": {} if version is None else {"version": version}}
    counts = []
    for layer in (normlab.BatchNorm2d(3), torch.nn.BatchNorm2d(3), normlab.BatchRenorm2d(3)):
        layer.num_batches_tracked.fill_(7)
        layer.load_state_dict(sd)
        counts.append(layer.num_batches_tracked.item())
    assert counts[0] == counts[1] == counts[2]
    bn = normlab.BatchNorm2d(3)
    bn.num_batches_tracked.fill_(10)
    ref = torch.nn.BatchNorm2d(3)
    ref.num_batches_tracked.fill_(10)
    bn.load_state_dict({"weight": torch.ones(3)}, strict=False)
    ref.load_state_dict({"weight": torch.ones(3)}, strict=False)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item()


def test_constructor_matches_torch():
    ours, theirs = normlab.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    assert (ours.eps, ours.momentum, ours.affine, ours.track_running_stats) == (1e-5, 0.1, True, True)
    assert_repr_like_torch(ours, theirs)
    bn = normlab.BatchNorm1d(3, affine=True, bias=False, dtype=torch.float64)
    assert bn.bias is None and bn.weight.dtype == torch.float64 and bn.running_mean.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long
    assert normlab.BatchNorm1d(3, track_running_stats=False).running_mean is None


def test_reset():
    bn = normlab.BatchNorm1d(3)
    bn(torch.randn(8, 3) * 5 + 2)
    with torch.no_grad():
        bn.weight.fill_(3)
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    assert bn.num_batches_tracked.item() == 0 and bn.weight[0].item() == 3
    bn.reset_parameters()
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.bias, torch.zeros(3))


def test_eval_without_running_stats_uses_the_batch():
    bn = normlab.BatchNorm1d(3, track_running_stats=False, affine=False).eval()
    x = torch.randn(10, 3) * 4 + 1
    y = bn(x)
    assert y.mean(0).abs().max() < 1e-6
    assert_rel(y.var(0, unbiased=False), torch.ones(3), 1e-4)


def test_momentum_none_is_the_cumulative_average(backend):
    bn = normlab.BatchNorm1d(2, momentum=None)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(20, 2, generator=gen) * (i + 1) + i for i in range(4)]
    for b in batches:
        bn(b)
    assert_rel(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), 1e-6)
    assert_rel(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0), 1e-6)


def test_batch_of_one_in_eval_mode_works():
    bn = normlab.BatchNorm1d(4).eval()
    assert bn(torch.randn(1, 4)).shape == (1, 4)


@pytest.mark.parametrize("shape,cls,dim", [((6, 7, 5), normlab.BatchNorm1d, -1), ((4, 3, 3, 5), normlab.BatchNorm2d, -1),
                                           ((4, 5, 3, 3), normlab.BatchNorm2d, 1), ((3, 2, 5, 2, 2), normlab.BatchNorm3d, 2)])
def test_channel_dim_is_torchs_layer_on_the_transposed_input(backend, shape, cls, dim):
    """BatchNorm1d(C, channel_dim=-1) on (N, L, C) token batches: exactly torch's layer on x.transpose(1, -1),
    outputs, input and parameter gradients, running statistics, in training and eval."""
    channels = shape[dim]
    ours, theirs = cls(channels, channel_dim=dim), getattr(torch.nn, cls.__name__)(channels)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5), theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    gen = torch.Generator().manual_seed(0)
    for step in range(2):
        x = 3 * torch.randn(shape, generator=gen) + step
        dy = torch.randn(shape, generator=gen)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo = ours(xo)
        yt = theirs(xt.movedim(dim, 1)).movedim(1, dim)
        yo.backward(dy), yt.backward(dy)
        assert_rel(yo, yt, 1e-5, "output")
        assert_rel(xo.grad, xt.grad, 1e-5, "input grad")
    for name in ("weight", "bias"):
        assert_rel(getattr(ours, name).grad, getattr(theirs, name).grad, 1e-5, name)
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert_rel(a, b, 1e-6, k)
    ours.eval(), theirs.eval()
    assert_rel(ours(x), theirs(x.movedim(dim, 1)).movedim(1, dim), 1e-5, "eval")
    assert f"channel_dim={dim}" in repr(ours) if dim != 1 else "channel_dim" not in repr(ours)


def test_channel_dim_errors_say_where_the_channels_are():
    bn = normlab.BatchNorm1d(4, channel_dim=-1)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\): expected 4 channels in dim -1 of the input, got 5"):
        bn(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"expected a 2-D \(N, C\) or 3-D \(N, C, L\) input with the channels in dim -1"):
        bn(torch.randn(2, 3, 5, 4))
