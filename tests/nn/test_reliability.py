"""No silent wrong answer from the layers on odd input or state: running statistics of
instance norm and mean-only batch norm guarded like batch norm's, weight norm's second derivatives
on the default backend, a zero weight and a negative running variance refused clearly, an empty
batch for instance norm, frozen batch norm from a batch norm without affine parameters, huge finite
inputs, and what each backend gives at a large offset."""

import warnings

import pytest
import torch
from torch import nn

import normlab
from normlab import reference as R
from conftest import assert_rel


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("build", [lambda **k: normlab.InstanceNorm1d(2, track_running_stats=True, **k),
                                   lambda **k: normlab.MeanOnlyBatchNorm(2, **k)],
                         ids=["InstanceNorm1d", "MeanOnlyBatchNorm"])
def test_running_statistics_of_instance_and_mean_only_norm_are_guarded(backend, build, bad):
    layer = build()
    layer(torch.randn(4, 2, 5))
    x = torch.randn(4, 2, 5)
    x[0, 1, 2] = bad
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(x)
    for name in ("running_mean", "running_var"):
        if name in before:
            assert torch.isfinite(getattr(layer, name)).all(), name
            assert torch.equal(getattr(layer, name)[1], before[name][1]), f"{name}: the bad channel kept its value"
            assert not torch.equal(getattr(layer, name)[0], before[name][0]), f"{name}: the good channel updated"
    strict = build(non_finite="raise")
    with pytest.raises(FloatingPointError, match=r"channel\(s\) 1 are not finite: the input holds NaN or Inf"):
        strict(x)


def test_weight_norm_second_derivatives_on_the_default_backend():
    """torch's fused weight-norm kernel differentiates twice wrongly; normlab's native backend routes the
    second derivative through the composite."""
    gen = torch.Generator().manual_seed(0)
    for dim, g_shape in ((0, (3, 1)), (1, (1, 4)), (None, ())):
        v = torch.randn(3, 4, dtype=torch.double, generator=gen, requires_grad=True)
        g = torch.rand(g_shape, dtype=torch.double, generator=gen).add_(0.5).requires_grad_()
        f = lambda v, g: normlab.functional.weight_norm(v, g, dim)  # noqa: E731
        assert torch.autograd.gradcheck(f, (v, g))
        assert torch.autograd.gradgradcheck(f, (v, g)), f"dim={dim}"
    layer = normlab.weight_norm(nn.Linear(4, 3).double())
    x = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: layer(x).tanh(), (x,))


def test_weight_norm_of_a_zero_weight_is_refused():
    layer = nn.Linear(3, 2)
    nn.init.zeros_(layer.weight)
    with pytest.raises(ValueError, match=r"weight_norm\(Linear.weight\): the weight is zero in slice\(s\) \[0, 1\] "
                                         r"along dim 0, so its direction v / \|\|v\|\| is undefined"):
        normlab.weight_norm(layer)
    assert not hasattr(layer, "parametrizations")


@pytest.mark.parametrize("build", [lambda: normlab.BatchNorm2d(3), lambda: normlab.FrozenBatchNorm(3),
                                   lambda: normlab.InstanceNorm2d(3, track_running_stats=True)])
@pytest.mark.parametrize("key,value", [("running_var", -1.0), ("running_var", float("nan")),
                                       ("running_mean", float("inf"))])
def test_a_checkpoint_whose_statistics_can_only_give_nan_is_refused(build, key, value):
    state = nn.BatchNorm2d(3).state_dict()
    state[key][1] = value
    layer = build()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError, match=rf"the checkpoint's '{key}' holds .* values \(channel\(s\) 1\), which can "
                                           "only give NaN; nothing was loaded into this layer"):
        layer.load_state_dict({k: v for k, v in state.items() if k in before}, strict=False)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_instance_norm_of_an_empty_batch(backend):
    layer = normlab.InstanceNorm2d(3, affine=True, track_running_stats=True)
    y = layer(torch.randn(0, 3, 4, 4))
    assert y.shape == (0, 3, 4, 4)
    assert torch.equal(layer.running_mean, torch.zeros(3))
    assert layer.eval()(torch.randn(0, 3, 4, 4)).shape == (0, 3, 4, 4)


def test_frozen_batch_norm_loads_a_batch_norm_without_affine_parameters():
    bn = nn.BatchNorm2d(3, affine=False)
    bn(3 * torch.randn(8, 3, 2, 2) + 1)
    frozen = normlab.FrozenBatchNorm(3)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(frozen(x), bn.eval()(x))


def test_huge_finite_inputs_say_what_happened_in_batch_norm():
    """1e30 in float32: the variance overflows. The running statistics keep their values, and the
    policies that report say that the input was finite and what overflowed."""
    x = torch.randn(8, 3, 4) * 1e30
    bn = normlab.BatchNorm1d(3, non_finite="raise")
    with pytest.raises(FloatingPointError, match=r"the input is finite, but its variance overflows torch.float32"):
        bn(x)
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_var, torch.ones(3))
    quiet = normlab.BatchNorm1d(3)
    y = quiet(x)  # the default: the running statistics keep their values, the output is right
    assert torch.equal(quiet.running_var, torch.ones(3))
    assert_rel(y, R.batch_norm_train(x.double().numpy())[0], 1e-5)


@pytest.mark.parametrize("build,reference", [
    (lambda: normlab.LayerNorm(64), lambda x: R.layer_norm(x, (64,))[0]),
    (lambda: normlab.GroupNorm(2, 4), lambda x: R.group_norm(x, 2)[0]),
    (lambda: normlab.InstanceNorm1d(4), lambda x: R.instance_norm(x)[0]),
    (lambda: normlab.RMSNorm(64), lambda x: R.rms_norm(x, (64,), eps=torch.finfo(torch.float32).eps)[0]),
    (lambda: normlab.BatchNorm1d(4), lambda x: R.batch_norm_train(x)[0]),
], ids=["LayerNorm", "GroupNorm", "InstanceNorm1d", "RMSNorm", "BatchNorm1d"])
@pytest.mark.parametrize("backend_name", [None, "normlab"])
def test_huge_finite_inputs_are_normalized_on_every_backend(build, reference, backend_name, request):
    """Values of 1e30 in float32: their variance overflows float32. On the default dispatch torch's kernel
    runs, normlab sees its 1 / sigma come out 0 or NaN and computes again with its own implementation."""
    if "RMSNorm" in request.node.name and backend_name is None and not hasattr(torch, "_fused_rms_norm"):
        pytest.skip("this torch's RMS norm gives no 1 / sigma to look at (docs/layers.md says so)")
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0)) * 1e30
    with normlab.use_backend(backend_name):
        y = build()(x)
    assert torch.isfinite(y).all()
    assert_rel(y, reference(x.double().numpy()), 1e-5)


@pytest.mark.parametrize("torch_norm", [
    lambda x: torch.nn.functional.layer_norm(x, (64,)), lambda x: torch.nn.functional.group_norm(x, 2),
    lambda x: torch.nn.functional.instance_norm(x), lambda x: torch.nn.functional.rms_norm(x, (64,)),
], ids=["layer_norm", "group_norm", "instance_norm", "rms_norm"])
def test_torchs_own_kernels_lose_huge_finite_inputs(torch_norm):
    """Why normlab looks at torch's statistics: torch's own CPU kernels give zeros or NaN on the input above
    (if this fails, torch has become exact there, and the look can go)."""
    x = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(0)) * 1e30
    y = torch_norm(x)
    assert not torch.isfinite(y).all() or y.abs().max() == 0


def test_which_backend_gives_what_at_a_large_offset():
    """What docs/layers.md states: float32 data of 1e4 + N(0, 1). torch's CPU kernel, the default, is off
    by about 1e-4 relative against float64; normlab's own (use_backend("normlab")) is exact to 1e-6."""
    gen = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(32, 8, 16, 16, generator=gen)
    expected, _ = R.batch_norm_train(x.double().numpy())
    errors = {}
    for backend in (None, "normlab"):
        with normlab.use_backend(backend):
            y = normlab.BatchNorm2d(8)(x)
        errors[backend] = (y.double() - torch.from_numpy(expected)).abs().max().item() / abs(expected).max()
    assert errors["normlab"] < 1e-6
    assert errors[None] > 1e-5  # if torch's kernel becomes stable, the docs can say so
    # and the layer says so where a user looks first, with the switch
    doc = " ".join(normlab.nn.batchnorm._BatchNorm.__doc__.split())
    assert "off by about 1e-4 relative" in doc and 'normlab.use_backend("normlab")' in doc and "exact to 1e-6" in doc


@pytest.mark.parametrize("backend_name", [None, "normlab"])
def test_a_mean_whose_sum_overflows_float32_is_taken_in_float64(backend_name):
    """Finite values near float32's largest: their sum overflows (not only their variance), and the channel's mean
    is then summed in float64, where it fits; the output is float64's, not NaN."""
    x = torch.randn(4, 3, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * 1.5e37
    x[:, 1] = x[:, 1].abs() + 3e37  # 32 values of more than 3e37: their sum is beyond float32's 3.4e38
    with normlab.use_backend(backend_name):
        y = normlab.BatchNorm3d(3)(x)
    assert torch.isfinite(y).all()
    assert_rel(y, R.batch_norm_train(x.double().numpy())[0], 1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_huge_finite_inputs_without_running_statistics_on_the_default_dispatch(training):
    """No running statistics, so no guard: the kernel's batch statistics are looked at all the same, and a
    variance that overflows float32 is computed again by normlab's own implementation (torch's gives zeros)."""
    x = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0)) * 1e30
    bn = normlab.BatchNorm1d(3, track_running_stats=False).train(training)
    assert_rel(bn(x), R.batch_norm_train(x.double().numpy())[0], 1e-5)


def test_rms_norm_computes_a_weight_of_another_dtype_as_torch_does():
    """torch's RMSNorm, alone among its norms, takes a float64 layer on a float32 input: torch 2.4 returns
    float64 (the weight multiplies after normalizing), later versions float32 with a warning."""
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    theirs = nn.RMSNorm(5).double()
    ours = normlab.RMSNorm(5).double()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        ours.weight.copy_(theirs.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own, where it cannot take its fused kernel
        expected = theirs(x)
    if expected.dtype == torch.float64:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch promotes without a word: so does normlab
            y = ours(x)
    else:
        with pytest.warns(UserWarning, match=r"RMSNorm\(\(5,\)\): the input is torch.float32 but weight is torch.float64"):
            y = ours(x)
    assert y.dtype == expected.dtype
    torch.testing.assert_close(y, expected)
