"""Bad input to LayerNorm, GroupNorm, InstanceNorm, RMSNorm, WeightNorm and MeanOnlyBatchNorm
gets a clear error naming the layer, the expectation and what came."""

import pytest
import torch
from torch import nn

import normlab
from normlab import functional as NF

LAYERS = {
    "LayerNorm": lambda: normlab.LayerNorm((4, 5)),
    "RMSNorm": lambda: normlab.RMSNorm(5),
    "GroupNorm": lambda: normlab.GroupNorm(2, 4),
    "InstanceNorm1d": lambda: normlab.InstanceNorm1d(4),
    "InstanceNorm2d": lambda: normlab.InstanceNorm2d(4, affine=True),
    "MeanOnlyBatchNorm": lambda: normlab.MeanOnlyBatchNorm(4),
}
NAMES = {"LayerNorm": r"LayerNorm\(\(4, 5\)\)", "RMSNorm": r"RMSNorm\(\(5,\)\)", "GroupNorm": r"GroupNorm\(2, 4\)",
         "InstanceNorm1d": r"InstanceNorm1d\(4\)", "InstanceNorm2d": r"InstanceNorm2d\(4\)",
         "MeanOnlyBatchNorm": r"MeanOnlyBatchNorm\(4\)"}


@pytest.mark.parametrize(
    "layer,shape,message",
    [
        ("LayerNorm", (3, 4, 6), r"expected an input whose last 2 dim\(s\) are \(4, 5\), got an input of shape \(3, 4, 6\)"),
        ("LayerNorm", (5,), r"expected an input whose last 2 dim\(s\) are \(4, 5\), got an input of shape \(5,\)"),
        ("RMSNorm", (2, 4), r"expected an input whose last 1 dim\(s\) are \(5,\)"),
        ("GroupNorm", (4,), r"expected an input of shape \(N, C, \*\), got a 1-D input of shape \(4,\)"),
        ("GroupNorm", (2, 6, 3), r"expected 4 channels in dim 1 of the input, got 6"),
        ("InstanceNorm1d", (2, 4, 3, 3), r"expected a 2-D \(C, L\) or 3-D \(N, C, L\) input, got a 4-D input"),
        ("InstanceNorm2d", (2, 4, 3), r"expected 4 channels in dim 0 of the input, got 2"),
        ("InstanceNorm2d", (2, 3, 5, 5), r"expected 4 channels in dim 1 of the input, got 3"),
        ("MeanOnlyBatchNorm", (4,), r"expected a 2-D \(N, C\) or .* input, got a 1-D input"),
        ("MeanOnlyBatchNorm", (2, 3, 5), r"expected 4 channels in dim 1 of the input, got 3"),
    ],
)
def test_wrong_rank_or_shape(layer, shape, message):
    with pytest.raises(ValueError, match=NAMES[layer] + ": " + message):
        LAYERS[layer]()(torch.randn(shape))


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_floating_input(layer, dtype):
    shape = {"LayerNorm": (2, 4, 5), "RMSNorm": (2, 5)}.get(layer, (2, 4, 3))
    with pytest.raises(TypeError, match=NAMES[layer] + rf": expected a floating-point input .* got {dtype}"):
        LAYERS[layer]()(torch.ones(shape, dtype=dtype))


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"LayerNorm\(\(3,\)\): expected a torch.Tensor, got list"):
        normlab.LayerNorm(3)([[1.0, 2.0, 3.0]])


def test_group_norm_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match=r"GroupNorm\(4, 6\): num_channels \(6\) must be divisible by num_groups \(4\)"):
        normlab.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="group_norm: the 6 channels of the input do not divide into 4 groups"):
        NF.group_norm(torch.randn(2, 6, 3), 4)


@pytest.mark.parametrize("n", [1, 4])
def test_group_norm_group_of_one_value(backend, n):
    """torch raises only for n = 1 and otherwise returns the bias whatever the input; normlab
    refuses both."""
    with pytest.raises(ValueError, match=r"GroupNorm\(4, 4\): each group holds a single value .* Use fewer groups"):
        normlab.GroupNorm(4, 4)(torch.randn(n, 4))
    with pytest.raises(ValueError, match="group_norm: each group holds a single value"):
        NF.group_norm(torch.randn(n, 4, 1, 1), 4)
    assert normlab.GroupNorm(2, 4)(torch.randn(n, 4)).shape == (n, 4)


def test_instance_norm_one_spatial_value_in_training(backend):
    layer = normlab.InstanceNorm2d(3, track_running_stats=True)
    for x in (torch.randn(4, 3, 1, 1), torch.randn(3, 1, 1)):
        with pytest.raises(ValueError, match=r"InstanceNorm2d\(3\): normalizing each instance needs more than one spatial value"):
            layer(x)
    with pytest.raises(ValueError, match="instance_norm: normalizing each instance needs more than one spatial value"):
        NF.instance_norm(torch.randn(4, 3, 1))
    layer.eval()  # running statistics need no spatial extent
    assert layer(torch.randn(4, 3, 1, 1)).shape == (4, 3, 1, 1)


def test_instance_norm_channel_mismatch_only_warns_when_num_features_is_unused():
    with pytest.warns(UserWarning, match=r"InstanceNorm1d\(4\): the input has 3 channels in dim 1; num_features is unused"):
        y = normlab.InstanceNorm1d(4)(torch.randn(2, 3, 5))
    assert y.shape == (2, 3, 5)
    with pytest.raises(ValueError, match=r"InstanceNorm1d\(4\): expected 4 channels in dim 1 of the input, got 3"):
        normlab.InstanceNorm1d(4, track_running_stats=True)(torch.randn(2, 3, 5))


def test_instance_norm_momentum_none_with_running_statistics():
    with pytest.raises(ValueError, match=r"InstanceNorm2d\(3\): momentum=None would never update the running statistics"):
        normlab.InstanceNorm2d(3, momentum=None, track_running_stats=True)
    normlab.InstanceNorm2d(3, momentum=None)  # unused without running statistics


def test_mean_only_batch_norm_one_value_per_channel(backend):
    bn = normlab.MeanOnlyBatchNorm(3)
    with pytest.raises(ValueError, match=r"MeanOnlyBatchNorm\(3\): training needs more than one value per channel.*call \.eval\(\)"):
        bn(torch.randn(1, 3))
    assert bn.num_batches_tracked.item() == 0
    with pytest.raises(ValueError, match="mean_only_batch_norm: training needs more than one value per channel"):
        NF.mean_only_batch_norm(torch.randn(1, 3), None, training=True)
    assert bn.eval()(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.parametrize(
    "theirs,ours,name",
    [
        (lambda: nn.LayerNorm(3), lambda: normlab.LayerNorm(4), r"LayerNorm\(\(4,\)\): the checkpoint's '1.weight' has shape \(3,\), expected \(4,\)"),
        (lambda: nn.RMSNorm(3), lambda: normlab.RMSNorm(4), r"RMSNorm\(\(4,\)\): the checkpoint's '1.weight' has shape \(3,\)"),
        (lambda: nn.GroupNorm(2, 6), lambda: normlab.GroupNorm(2, 4), r"GroupNorm\(2, 4\): the checkpoint's '1.weight' has shape \(6,\)"),
        (lambda: nn.InstanceNorm2d(3, affine=True), lambda: normlab.InstanceNorm2d(4, affine=True), r"InstanceNorm2d\(4\): the checkpoint's '1.weight'"),
        (lambda: normlab.MeanOnlyBatchNorm(3), lambda: normlab.MeanOnlyBatchNorm(4), r"MeanOnlyBatchNorm\(4\): the checkpoint's '1.bias'"),
        (lambda: nn.utils.parametrizations.weight_norm(nn.Linear(2, 3)), lambda: normlab.weight_norm(nn.Linear(2, 4)),
         r"weight_norm\(Linear.weight\): the checkpoint's '1.parametrizations.weight.original0' has shape \(3, 1\), expected \(4, 1\)"),
    ],
)
def test_mismatched_state_dict_names_the_layer(theirs, ours, name):
    sd = {f"1.{k}": v for k, v in theirs().state_dict().items()}
    model = nn.Sequential(nn.Identity(), ours())
    with pytest.raises(RuntimeError, match=name):
        model.load_state_dict(sd)


def test_weight_norm_refuses_what_it_cannot_reparameterize():
    with pytest.raises(ValueError, match=r"weight_norm\(Linear.wieght\): Linear has no parameter 'wieght'"):
        normlab.weight_norm(nn.Linear(2, 3), "wieght")
    with pytest.raises(ValueError, match=r"weight_norm\(Linear.weight\): dim=2 is out of range for a 2-D weight of shape \(3, 2\)"):
        normlab.weight_norm(nn.Linear(2, 3), dim=2)
    layer = nn.Linear(2, 3)
    layer.weight = nn.Parameter(torch.ones(3, 2, dtype=torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match=r"weight_norm\(Linear.weight\): expected a floating-point weight, got torch.int64"):
        normlab.weight_norm(layer)


def test_data_dependent_init_refuses_what_it_cannot_initialize():
    x = torch.randn(8, 3)
    with pytest.raises(ValueError, match="data_dependent_init: the model has no layer with weight norm"):
        normlab.data_dependent_init(nn.Linear(3, 2), x)
    with pytest.raises(ValueError, match="data_dependent_init: Linear has weight norm with dim=1; it needs dim=0"):
        normlab.data_dependent_init(normlab.weight_norm(nn.Linear(3, 2), dim=1), x)
    with pytest.raises(ValueError, match="data_dependent_init: ConvTranspose1d is not supported"):
        normlab.data_dependent_init(normlab.weight_norm(nn.ConvTranspose1d(3, 2, 2)), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"data_dependent_init: output unit\(s\) \[0, 1\] of the model \(Linear\) are constant over the batch"):
        normlab.data_dependent_init(normlab.weight_norm(nn.Linear(3, 2)), torch.ones(8, 3))
    # a pass that fails after the first layer was initialized leaves the model as it was
    model = nn.Sequential(normlab.weight_norm(nn.Linear(3, 3)), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        normlab.data_dependent_init(model, torch.randn(8, 3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed by the failed initialization"


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: NF.layer_norm(torch.randn(2, 3), 3, torch.ones(1)), r"layer_norm: expected weight of shape \(3,\), got \(1,\)"),
        (lambda: NF.layer_norm(torch.randn(2, 3), 3, eps=float("nan")), "layer_norm: eps must be a finite number >= 0, got nan"),
        (lambda: NF.rms_norm(torch.randn(2, 3), 3, eps=-1.0), "rms_norm: eps must be a finite number >= 0"),
        (lambda: NF.instance_norm(torch.randn(2, 3, 4), use_input_stats=False), "instance_norm: use_input_stats=False needs running_mean and running_var"),
    ],
)
def test_functional_forms_refuse_silent_mistakes(backend, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match=r"LayerNorm: normalized_shape must be positive ints, got \(0,\)"):
        normlab.LayerNorm((0,))
    with pytest.raises(ValueError, match=r"RMSNorm\(\(3,\)\): eps must be a finite number >= 0, got -1"):
        normlab.RMSNorm(3, eps=-1)
    with pytest.raises(ValueError, match=r"GroupNorm\(0, 4\): num_groups must be a positive int, got 0"):
        normlab.GroupNorm(0, 4)
    for bad in (float("nan"), float("inf"), -1e-3):
        for build in (lambda: normlab.LayerNorm(3, eps=bad), lambda: normlab.GroupNorm(1, 3, eps=bad),
                      lambda: normlab.InstanceNorm1d(3, eps=bad), lambda: normlab.RMSNorm(3, eps=bad)):
            with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
                build()
    with pytest.raises(ValueError, match="InstanceNorm2d: momentum is the weight of the new batch"):
        normlab.InstanceNorm2d(3, momentum=float("nan"))


@pytest.mark.parametrize("build", [lambda m: m.LayerNorm(3, eps=0.0), lambda m: m.GroupNorm(1, 3, 0.0),
                                   lambda m: m.InstanceNorm1d(3, eps=0.0), lambda m: m.RMSNorm(3, eps=0.0)])
def test_eps_zero_is_accepted_as_torch_does_with_a_warning(build):
    with pytest.warns(UserWarning, match="eps=0 divides by zero"):
        ours = build(normlab)
    x = torch.randn(4, 3, 3)
    torch.testing.assert_close(ours(x), build(torch.nn)(x))


def test_batch_norm_with_eps_zero_builds_and_evaluates_but_refuses_training_as_torch_does():
    with pytest.warns(UserWarning, match="eps=0 divides by zero"):
        bn = normlab.BatchNorm1d(3, eps=0.0)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): eps must be a finite number > 0, got 0.0"):
        bn(torch.randn(4, 3))
    x = torch.randn(4, 3)
    torch.testing.assert_close(bn.eval()(x), torch.nn.BatchNorm1d(3, eps=0.0).eval()(x))
