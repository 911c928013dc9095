"""What torch accepts, normlab accepts, and where both refuse, normlab's error is an instance of
torch's type: sizes as NumPy integers, torch's positional arguments, eps=0 and a momentum outside
[0, 1] (with a warning), a checkpoint tensor of the wrong size (RuntimeError), a dtype mismatch
(RuntimeError naming the layer, the same on both backends); every layer is an instance of its
torch class."""

import inspect

import numpy as np
import pytest
import torch
from torch import nn

import normlab

# normlab class -> the torch class it is an instance of
INSTANCES = [
    (normlab.BatchNorm1d, nn.BatchNorm1d), (normlab.BatchNorm2d, nn.BatchNorm2d), (normlab.BatchNorm3d, nn.BatchNorm3d),
    (normlab.SyncBatchNorm, nn.SyncBatchNorm), (normlab.BatchRenorm2d, nn.BatchNorm2d),
    (normlab.GhostBatchNorm, nn.modules.batchnorm._BatchNorm), (normlab.BatchNormAct, nn.modules.batchnorm._BatchNorm),
    (normlab.MeanOnlyBatchNorm, nn.modules.batchnorm._BatchNorm), (normlab.InstanceNorm1d, nn.InstanceNorm1d),
    (normlab.InstanceNorm2d, nn.InstanceNorm2d), (normlab.InstanceNorm3d, nn.InstanceNorm3d),
]  # fmt: skip


@pytest.mark.parametrize("ours,theirs", INSTANCES, ids=lambda c: c.__name__)
def test_every_layer_is_an_instance_of_its_torch_class(ours, theirs):
    assert isinstance(ours(4), theirs)


def test_the_norms_over_other_axes_too_and_frozen_batch_norm_is_not_a_batch_norm():
    assert isinstance(normlab.LayerNorm(4), nn.LayerNorm) and isinstance(normlab.RMSNorm(4), nn.RMSNorm)
    assert isinstance(normlab.GroupNorm(2, 4), nn.GroupNorm)
    # as torchvision's FrozenBatchNorm2d: update_bn would otherwise reset statistics it never recomputes
    assert not isinstance(normlab.FrozenBatchNorm(4), nn.modules.batchnorm._NormBase)


@pytest.mark.parametrize(
    "build",
    [lambda n: normlab.BatchNorm2d(n), lambda n: normlab.SyncBatchNorm(n), lambda n: normlab.InstanceNorm1d(n),
     lambda n: normlab.GroupNorm(n // 2, n), lambda n: normlab.LayerNorm(n), lambda n: normlab.LayerNorm((n, n)),
     lambda n: normlab.RMSNorm(n), lambda n: normlab.FrozenBatchNorm(n), lambda n: normlab.MeanOnlyBatchNorm(n),
     lambda n: normlab.GhostBatchNorm(n, virtual_batch_size=np.int32(2)), lambda n: normlab.BatchNormAct(n)],
)
def test_numpy_integer_sizes_are_accepted(build):
    layer = build(np.int64(4))
    assert all(type(v) is int for k, v in vars(layer).items() if k in ("num_features", "num_groups", "num_channels"))
    assert build(4).state_dict().keys() == layer.state_dict().keys()


def test_group_norm_takes_torchs_positional_arguments():
    """torch's GroupNorm(num_groups, num_channels, eps, affine, device, dtype, *, bias): the fifth is the device."""
    signature = list(inspect.signature(normlab.GroupNorm).parameters)
    assert signature[:6] == ["num_groups", "num_channels", "eps", "affine", "device", "dtype"]
    assert inspect.signature(normlab.GroupNorm).parameters["bias"].kind is inspect.Parameter.KEYWORD_ONLY
    gn = normlab.GroupNorm(2, 4, 1e-3, True, "meta")
    assert gn.weight.device.type == "meta"
    with pytest.raises(TypeError):
        normlab.GroupNorm(2, 4, 1e-5, True, None, None, False)  # bias is keyword-only, as in torch
    assert normlab.GroupNorm(2, 4, bias=False).bias is None


def test_momentum_outside_zero_one_works_as_in_torch_with_a_warning():
    x = torch.randn(8, 3)
    with pytest.warns(UserWarning, match="momentum=1.5 lies outside"):
        ours = normlab.BatchNorm1d(3, momentum=1.5)
    theirs = torch.nn.BatchNorm1d(3, momentum=1.5)
    ours(x), theirs(x)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_a_checkpoint_of_the_wrong_size_is_torchs_runtime_error_with_normlabs_message():
    model = nn.Sequential(normlab.BatchNorm2d(4), normlab.LayerNorm(3))
    bad = {"0." + k: v for k, v in nn.BatchNorm2d(5).state_dict().items()}
    bad.update({"1." + k: v for k, v in nn.LayerNorm(3).state_dict().items()})
    with pytest.raises(RuntimeError, match=r"BatchNorm2d\(4\): the checkpoint's '0.weight' has shape \(5,\)"):
        model.load_state_dict(bad)
    try:
        model.load_state_dict(bad)
    except RuntimeError as e:  # torch's aggregate message, for except RuntimeError
        assert "Error(s) in loading state_dict for Sequential" in str(e)


@pytest.mark.parametrize("layer_dtype,input_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                                     (torch.float16, torch.float32)])
@pytest.mark.parametrize("build", [lambda d: normlab.BatchNorm1d(3, dtype=d), lambda d: normlab.LayerNorm(4, dtype=d),
                                   lambda d: normlab.GroupNorm(1, 3, dtype=d),
                                   lambda d: normlab.InstanceNorm1d(3, affine=True, dtype=d)])
def test_a_dtype_mismatch_names_the_layer_on_every_backend(backend, build, layer_dtype, input_dtype):
    """torch's CPU kernel raises "mixed dtype (CPU)" without the layer's name, normlab's own computed: now
    both refuse, with a RuntimeError (torch's type) that names the layer and both dtypes."""
    layer = build(layer_dtype)
    x = torch.randn(2, 3, 4, dtype=input_dtype)
    with pytest.raises(RuntimeError, match=rf"{type(layer).__name__}.*: the input is {input_dtype} but .* is {layer_dtype}"):
        layer(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_with_float32_statistics_are_accepted_as_torch_does(backend, dtype):
    bn = normlab.BatchNorm1d(3)
    x = torch.randn(8, 3).to(dtype)
    assert bn(x).dtype == dtype and bn.running_mean.dtype == torch.float32


def test_integer_inputs_are_torchs_runtime_error_too():
    with pytest.raises(RuntimeError, match=r"BatchNorm1d\(3\): expected a floating-point input"):
        normlab.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError):  # and a TypeError, as before
        normlab.LayerNorm(3)(torch.ones(4, 3, dtype=torch.long))


def test_channel_count_mismatch_is_torchs_runtime_error_too():
    with pytest.raises(RuntimeError, match=r"BatchNorm2d\(4\): expected 4 channels in dim 1 of the input, got 3"):
        normlab.BatchNorm2d(4)(torch.randn(2, 3, 2, 2))
