"""LayerNorm, GroupNorm, InstanceNorm1d/2d/3d and RMSNorm against torch.nn's: outputs, gradients,
running statistics and eval outputs to 1e-5 relative in float32 on both dispatch paths;
constructor arguments, repr and state_dict compatibility."""

import itertools

import pytest
import torch

import normlab
from conftest import assert_rel, assert_repr_like_torch

TORCH = tuple(int(p) for p in torch.__version__.split(".")[:2])

# (id, build(namespace): the layer from normlab or torch.nn with the same arguments, input shape)
LAYERS = [
    ("LayerNorm-last", lambda m: m.LayerNorm(6), (4, 5, 6)),
    ("LayerNorm-two", lambda m: m.LayerNorm((5, 6)), (3, 5, 6)),
    ("LayerNorm-nobias", lambda m: m.LayerNorm(6, bias=False), (4, 6)),
    ("LayerNorm-noaffine", lambda m: m.LayerNorm(6, elementwise_affine=False), (4, 6)),
    ("GroupNorm-2d", lambda m: m.GroupNorm(3, 6), (4, 6, 3, 5)),
    ("GroupNorm-1d", lambda m: m.GroupNorm(2, 6, eps=1e-3), (4, 6, 7)),
    ("GroupNorm-vec", lambda m: m.GroupNorm(2, 6), (5, 6)),
    ("GroupNorm-3d-noaffine", lambda m: m.GroupNorm(1, 6, affine=False), (2, 6, 2, 3, 2)),
    ("RMSNorm-last", lambda m: m.RMSNorm(6), (4, 5, 6)),
    ("RMSNorm-eps", lambda m: m.RMSNorm((5, 6), eps=1e-3), (3, 5, 6)),
    ("RMSNorm-noaffine", lambda m: m.RMSNorm(6, elementwise_affine=False), (4, 6)),
]


def randomize(layer, gen):
    """Weights in [0.5, 1.5), biases N(0, 1), so that the affine map is not the identity."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if name == "weight" else torch.randn(p.shape, generator=gen))


def run_and_compare(ours, theirs, shape, gen, steps=2, what=""):
    for step in range(steps):
        x = (2 + 3 * torch.randn(shape, generator=gen)) * (step + 1)
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        dy = torch.randn(yt.shape, generator=gen)
        yo.backward(dy)
        yt.backward(dy)
        assert_rel(yo, yt, 1e-5, f"{what} step {step} output")
        assert_rel(xo.grad, xt.grad, 1e-5, f"{what} step {step} input grad")
    for (name, po), pt in zip(ours.named_parameters(), theirs.parameters()):
        assert_rel(po.grad, pt.grad, 1e-5, f"{what} {name} grad")


@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_stateless_layers_conform_to_torch(backend, case):
    _, build, shape = case
    gen = torch.Generator().manual_seed(0)
    theirs, ours = build(torch.nn), build(normlab)
    randomize(theirs, gen)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert_repr_like_torch(ours, theirs)
    run_and_compare(ours, theirs, shape, gen)
    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen)
    assert_rel(ours(x), theirs(x), 1e-5, "eval output")


INSTANCE = [
    (normlab.InstanceNorm1d, torch.nn.InstanceNorm1d, (4, 3, 7)),
    (normlab.InstanceNorm2d, torch.nn.InstanceNorm2d, (4, 3, 5, 4)),
    (normlab.InstanceNorm3d, torch.nn.InstanceNorm3d, (2, 3, 3, 4, 2)),
]


@pytest.mark.parametrize("case", INSTANCE, ids=lambda c: c[0].__name__)
@pytest.mark.parametrize("affine,track", list(itertools.product([False, True], [False, True])))
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_instance_norm_conforms_to_torch(backend, case, affine, track, momentum):
    ours_cls, torch_cls, shape = case
    gen = torch.Generator().manual_seed(0)
    theirs = torch_cls(3, momentum=momentum, affine=affine, track_running_stats=track)
    randomize(theirs, gen)
    ours = ours_cls(3, momentum=momentum, affine=affine, track_running_stats=track)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert_repr_like_torch(ours, theirs)
    run_and_compare(ours, theirs, shape, gen, steps=3)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert_rel(a, b, 1e-5, name)
    ours.eval(), theirs.eval()
    x = torch.randn(shape, generator=gen)
    assert_rel(ours(x), theirs(x), 1e-5, "eval output")
    assert_rel(ours(x[0]), theirs(x[0]), 1e-5, "eval output, unbatched")


def test_instance_norm_running_statistics_average_the_instances(backend):
    """torch's rule: the running statistics move towards the mean over the batch of each
    instance's mean and unbiased variance (not the statistics of the pooled batch)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 6, generator=gen) * torch.arange(1.0, 6.0).view(5, 1, 1) + torch.arange(5.0).view(5, 1, 1)
    layer = normlab.InstanceNorm1d(2, track_running_stats=True, momentum=0.5)
    layer(x)
    assert_rel(layer.running_mean, 0.5 * x.mean(2).mean(0), 1e-6, "running_mean")
    assert_rel(layer.running_var, 0.5 + 0.5 * x.var(2).mean(0), 1e-6, "running_var")
    assert layer.num_batches_tracked.item() == 0  # kept for the state_dict, never counted, as in torch
    layer.eval()
    expected = (x - layer.running_mean.view(1, 2, 1)) / torch.sqrt(layer.running_var.view(1, 2, 1) + layer.eps)
    assert_rel(layer(x), expected, 1e-6, "eval uses the running statistics")


def test_unbatched_input_is_a_batch_of_one(backend):
    layer = normlab.InstanceNorm2d(3, affine=True)
    x = torch.randn(3, 4, 5)
    assert_rel(layer(x), layer(x[None])[0], 1e-7)
    assert layer(x).shape == (3, 4, 5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_rms_norm_default_eps_is_machine_epsilon_of_the_compute_type(backend, dtype):
    """eps=None is float32's epsilon for 16- and 32-bit inputs, float64's for float64: it shows
    on an input whose mean square is comparable to it."""
    x = torch.full((2, 4), 3e-4, dtype=torch.float64).to(dtype)
    ours, theirs = normlab.RMSNorm(4, dtype=dtype), torch.nn.RMSNorm(4, dtype=dtype)
    if dtype in (torch.float32, torch.float64) or TORCH >= (2, 7):  # before: a 16-bit input's own epsilon
        assert_rel(ours(x).double(), theirs(x).double(), 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = x.double() / torch.sqrt(x.double().square().mean(-1, keepdim=True) + torch.finfo(compute).eps)
    assert_rel(ours(x).double(), expected, 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda m: m.LayerNorm((2, 3)),
        lambda m: m.GroupNorm(2, 4),
        lambda m: m.RMSNorm(3),
        lambda m: m.InstanceNorm2d(4, affine=True, track_running_stats=True),
    ],
    ids=["LayerNorm", "GroupNorm", "RMSNorm", "InstanceNorm2d"],
)
def test_state_dict_moves_both_ways(build, tmp_path):
    gen = torch.Generator().manual_seed(1)
    theirs = build(torch.nn)
    randomize(theirs, gen)
    ours = build(normlab)
    ours.load_state_dict(theirs.state_dict())
    back = build(torch.nn)
    back.load_state_dict(ours.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    torch.save(torch.nn.Sequential(theirs).state_dict(), tmp_path / "ckpt.pt")
    model = torch.nn.Sequential(build(normlab))
    model.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    for k, v in theirs.state_dict().items():
        assert torch.equal(model[0].state_dict()[k], v), k


def test_constructor_defaults_match_torch():
    for ours, theirs in [
        (normlab.LayerNorm(4), torch.nn.LayerNorm(4)),
        (normlab.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)),
        (normlab.RMSNorm(4), torch.nn.RMSNorm(4)),
        (normlab.InstanceNorm2d(4), torch.nn.InstanceNorm2d(4)),
    ]:
        assert_repr_like_torch(ours, theirs)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
        assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    ln = normlab.LayerNorm([2, 3], dtype=torch.float64)
    assert ln.normalized_shape == (2, 3) and ln.weight.dtype == torch.float64
    assert normlab.InstanceNorm1d(3, affine=True, bias=False).bias is None


def test_group_norm_is_layer_norm_and_instance_norm_at_the_extremes(backend):
    x = torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(2))
    assert_rel(normlab.GroupNorm(1, 4, affine=False)(x), normlab.LayerNorm((4, 5, 2), elementwise_affine=False)(x), 1e-6)
    assert_rel(normlab.GroupNorm(4, 4, affine=False)(x), normlab.InstanceNorm2d(4)(x), 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_own_implementation_accumulates_half_precision_in_float32(dtype):
    """Rows of 4096 values around 10: their sum overflows float16 and is coarse in bfloat16."""
    gen = torch.Generator().manual_seed(0)
    x = (10 + torch.randn(2, 3, 4096, generator=gen)).to(dtype)
    with normlab.use_backend("normlab"):
        ys = [normlab.LayerNorm(4096, dtype=dtype)(x), normlab.GroupNorm(3, 3, dtype=dtype)(x),
              normlab.InstanceNorm1d(3)(x), normlab.RMSNorm(4096, dtype=dtype)(x)]
    xd = x.double()
    centered = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + 1e-5)
    rms = xd / torch.sqrt(xd.square().mean(-1, keepdim=True) + torch.finfo(torch.float32).eps)
    resolution = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    for y, expected in zip(ys, [centered, centered, centered, rms]):
        assert y.dtype == dtype
        assert_rel(y, expected, 4 * resolution)


@pytest.mark.parametrize(
    "layer,shape",
    [(normlab.LayerNorm(4), (2, 4)), (normlab.RMSNorm(4), (2, 4)), (normlab.GroupNorm(2, 4), (2, 4, 3)),
     (normlab.InstanceNorm1d(4), (2, 4, 3))],
    ids=lambda v: type(v).__name__ if isinstance(v, torch.nn.Module) else "",
)
@pytest.mark.parametrize("forced,own_calls", [(None, 0), ("native", 0), ("normlab", 1)])
def test_the_module_runs_the_chosen_backend(monkeypatch, layer, shape, forced, own_calls):
    from normlab import autograd

    calls = []
    real = autograd.Normalize.apply
    monkeypatch.setattr(autograd.Normalize, "apply", lambda *a: calls.append(1) or real(*a))
    with normlab.use_backend(forced):
        layer(torch.randn(shape))
    assert len(calls) == own_calls


def test_own_implementation_is_stable_at_a_large_offset():
    """float32 input of 1e4 + N(0, 9): normlab's own output and input gradient match the float64
    reference to 1e-5 relative (torch's CPU kernels are off by about 1e-4 here)."""
    from normlab import reference as R

    gen = torch.Generator().manual_seed(0)
    x = 1e4 + 3 * torch.randn(4, 8, 16, 16, generator=gen)
    dy = torch.randn(x.shape, generator=gen)
    cases = [
        (normlab.LayerNorm((16, 16)), R.layer_norm(x.double().numpy(), (16, 16)), R.normalize_backward),
        (normlab.GroupNorm(2, 8), R.group_norm(x.double().numpy(), 2), R.group_norm_backward),
        (normlab.InstanceNorm2d(8), R.instance_norm(x.double().numpy()), R.normalize_backward),
    ]
    for layer, (y_ref, cache), backward in cases:
        xt = x.clone().requires_grad_()
        with normlab.use_backend("normlab"):
            y = layer(xt)
        y.backward(dy)
        assert_rel(y, y_ref, 1e-5, f"{type(layer).__name__} y")
        assert_rel(xt.grad, backward(dy.double().numpy(), cache)[0], 1e-5, f"{type(layer).__name__} dx")
