"""Bad input gets a clear error naming the layer, the expectation and what came."""

import pytest
import torch

import normlab


@pytest.mark.parametrize(
    "layer,x,message",
    [
        (normlab.BatchNorm1d(4), torch.randn(2, 4, 3, 3), r"BatchNorm1d\(4\): expected a 2-D \(N, C\) or 3-D \(N, C, L\) input, got a 4-D input of shape \(2, 4, 3, 3\)"),
        (normlab.BatchNorm2d(4), torch.randn(2, 4, 3), r"BatchNorm2d\(4\): expected a 4-D \(N, C, H, W\) input, got a 3-D"),
        (normlab.BatchNorm3d(4), torch.randn(2, 4, 3, 3), r"BatchNorm3d\(4\): expected a 5-D"),
        (normlab.BatchNorm2d(4), torch.randn(2, 3, 5, 5), r"BatchNorm2d\(4\): expected 4 channels in dim 1 of the input, got 3"),
    ],
)
def test_wrong_shape(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer(x)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
def test_non_floating_input(dtype):
    with pytest.raises(TypeError, match=rf"BatchNorm1d\(3\): expected a floating-point input .* got {dtype}"):
        normlab.BatchNorm1d(3)(torch.ones(4, 3, dtype=dtype))


@pytest.mark.parametrize("name", ["BatchNorm1d", "InstanceNorm1d", "LayerNorm", "GroupNorm", "RMSNorm"])
def test_an_integer_input_raises_what_code_written_for_torch_catches(name):
    args = (1, 3) if name == "GroupNorm" else (3,)
    x = torch.ones(4, 3, 5, dtype=torch.long) if name == "InstanceNorm1d" else torch.ones(4, 3, dtype=torch.long)
    with pytest.raises(Exception) as theirs:
        getattr(torch.nn, name)(*args)(x)
    with pytest.raises(type(theirs.value)) as ours:  # NotImplementedError or RuntimeError, as torch's
        getattr(normlab, name)(*args)(x)
    assert isinstance(ours.value, TypeError) and name in str(ours.value)


def test_not_a_tensor():
    with pytest.raises(TypeError, match=r"BatchNorm1d\(3\): expected a torch.Tensor, got list"):
        normlab.BatchNorm1d(3)([[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("layer,shape", [(normlab.BatchNorm1d(3), (1, 3)), (normlab.BatchNorm2d(3), (1, 3, 1, 1))])
def test_one_value_per_channel_in_training_says_what_to_do(layer, shape):
    with pytest.raises(ValueError, match=r"more than one value per channel.*call \.eval\(\)"):
        layer(torch.randn(shape))
    assert layer.num_batches_tracked.item() == 0  # the refused batch is not counted
    layer.eval()
    assert layer(torch.randn(shape)).shape == shape


def test_one_value_per_channel_in_functional_form(backend):
    with pytest.raises(ValueError, match="more than one value per channel"):
        normlab.functional.batch_norm(torch.randn(1, 3), None, None, training=True)


def test_mismatched_state_dict_names_the_layer():
    sd = torch.nn.BatchNorm2d(32).state_dict()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), normlab.BatchNorm2d(64))
    with pytest.raises(RuntimeError, match=r"BatchNorm2d\(64\): the checkpoint's '1.weight' has shape \(32,\), expected \(64,\)"):
        model.load_state_dict({"0.weight": model[0].weight, "0.bias": model[0].bias, **{f"1.{k}": v for k, v in sd.items()}})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_training_batch_is_refused_and_state_kept(backend, bad):
    bn = normlab.BatchNorm2d(3, non_finite="raise")
    bn(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(4, 3, 2, 2)
    x[1, 2, 0, 1] = bad
    with pytest.raises(FloatingPointError, match=r"BatchNorm2d\(3\): the batch statistics of channel\(s\) 2 are not "
                                                 r"finite: the input holds NaN or Inf"):
        bn(x)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_by_default_a_non_finite_channel_keeps_its_running_statistics(backend, bad):
    """non_finite="skip": the other channels update, the bad one keeps its values, no error; the
    output of that channel is non-finite, as torch's."""
    bn, ref = normlab.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2)
    bn(x), ref(x)
    x = torch.randn(4, 3, 2, 2)
    before = bn.running_var.clone()
    x[1, 2, 0, 1] = bad
    y = bn(x)
    ref(x)
    assert not torch.isfinite(y[:, 2]).all() and torch.isfinite(y[:, :2]).all()
    assert torch.equal(bn.running_var[2], before[2]) and torch.equal(bn.running_mean[2], bn.running_mean[2])
    torch.testing.assert_close(bn.running_var[:2], ref.running_var[:2])
    assert bn.num_batches_tracked.item() == 2


def test_warn_mode_skips_the_channel_and_says_so():
    bn = normlab.BatchNorm1d(2, non_finite="warn")
    before = bn.running_mean.clone()
    with pytest.warns(RuntimeWarning, match=r"BatchNorm1d\(2\): the batch statistics of channel\(s\) 1 are not finite"):
        bn(torch.tensor([[1.0, float("nan")], [2.0, 1.0]]))
    assert torch.equal(bn.running_mean[1], before[1]) and bn.running_mean[0] != before[0]


def test_non_finite_check_can_be_turned_off_to_behave_like_torch():
    bn, ref = normlab.BatchNorm1d(2, non_finite="propagate"), torch.nn.BatchNorm1d(2)
    x = torch.tensor([[1.0, float("nan")], [2.0, 1.0], [3.0, 0.0]])
    torch.testing.assert_close(bn(x), ref(x), equal_nan=True)
    assert torch.isnan(bn.running_mean[1]) and not torch.isnan(bn.running_mean[0])


def test_non_finite_input_in_eval_stays_where_it_is():
    """In eval the map is per element: a NaN reaches only its own output."""
    bn = normlab.BatchNorm1d(2).eval()
    x = torch.tensor([[float("nan"), 1.0], [2.0, 1.0]])
    y = bn(x)
    assert torch.isnan(y[0, 0]) and torch.isfinite(y.flatten()[1:]).all()


def test_constructor_arguments_are_checked():
    with pytest.warns(UserWarning, match=r"BatchNorm1d: momentum=1.5 lies outside \[0, 1\]"):
        assert normlab.BatchNorm1d(3, momentum=1.5).momentum == 1.5  # torch accepts it
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        normlab.BatchNorm2d(0)
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got -1.0"):
        normlab.BatchNorm2d(3, eps=-1.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="BatchNorm2d: eps must be a finite number"):
            normlab.BatchNorm2d(3, eps=bad)
        with pytest.raises(ValueError, match="BatchNorm2d: momentum is the weight of the new batch.* a finite number"):
            normlab.BatchNorm2d(3, momentum=bad)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("make,message", [
    (lambda: normlab.BatchNormAct(3, activation="leaky_relu", negative_slope=NAN), r"BatchNormAct\(3\): leaky_relu's negative_slope must be a finite number, got nan"),
    (lambda: normlab.BatchNormAct(3, activation="elu", alpha=INF), r"BatchNormAct\(3\): elu's alpha must be a finite number, got inf"),
    (lambda: normlab.FrozenBatchNorm(3, eps=NAN), r"FrozenBatchNorm: eps must be a finite number >= 0, got nan"),
    (lambda: normlab.GhostBatchNorm(3, virtual_batch_size=4, eps=INF), r"GhostBatchNorm: eps must be a finite number"),
    (lambda: normlab.MeanOnlyBatchNorm(3, momentum=NAN), r"MeanOnlyBatchNorm: momentum is the weight .* a finite number"),
    (lambda: normlab.BatchRenorm2d(3, rmax=NAN), r"BatchRenorm2d\(3\): needs rmax >= 1 and dmax >= 0, got rmax=nan"),
    (lambda: normlab.BatchRenorm2d(3, dmax=NAN), r"BatchRenorm2d\(3\): needs rmax >= 1 and dmax >= 0, got .*dmax=nan"),
], ids=["leaky_relu-slope", "elu-alpha", "frozen-eps", "ghost-eps", "mean-only-momentum", "renorm-rmax", "renorm-dmax"])
def test_every_constructor_refuses_arguments_that_can_only_give_nan(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_arguments_that_give_numbers_stay_accepted():
    """What torch accepts and that computes a number: an unbounded renormalization, the cumulative average,
    a negative slope (a valid, if odd, leaky ReLU), and an activation's parameter it does not use."""
    x = torch.randn(8, 3)
    for layer in (normlab.BatchRenorm1d(3, rmax=INF, dmax=INF), normlab.BatchNorm1d(3, momentum=None),
                  normlab.BatchNormAct(3, activation="leaky_relu", negative_slope=-0.5),
                  normlab.BatchNormAct(3, activation="relu", alpha=NAN)):
        assert torch.isfinite(layer(x)).all(), layer


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown normlab backend 'cuda'"):
        normlab.set_backend("cuda")


@pytest.mark.parametrize(
    "layer,x,message",
    [
        (normlab.BatchRenorm1d(4), torch.randn(2, 4, 3, 3), r"BatchRenorm1d\(4\): expected a 2-D \(N, C\) or 3-D \(N, C, L\) input, got a 4-D"),
        (normlab.GhostBatchNorm(4), torch.randn(4), r"GhostBatchNorm\(4\): expected a 2-D \(N, C\) or .* or 5-D \(N, C, D, H, W\) input, got a 1-D"),
        (normlab.SyncBatchNorm(4), torch.randn(2, 3, 5), r"SyncBatchNorm\(4\): expected 4 channels in dim 1 of the input, got 3"),
        (normlab.SyncBatchRenorm(4), torch.randn(2, 3), r"SyncBatchRenorm\(4\): expected 4 channels"),
        (normlab.FrozenBatchNorm(4), torch.randn(2, 5), r"FrozenBatchNorm\(4\): expected 4 channels"),
    ],
)
def test_variants_name_themselves(layer, x, message):
    with pytest.raises(ValueError, match=message):
        layer(x)


def test_warn_mode_composes_with_amp_grad_scaler_skipping_a_step():
    """An overflowing step under AMP: the GradScaler skips the optimizer step, the batch norm keeps its
    running statistics and warns; training goes on from the same state as if the step never came."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), normlab.BatchNorm1d(3, non_finite="warn"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    good = torch.randn(8, 4)
    bad = good.clone()
    bad[0, 0] = float("inf")  # what an overflow upstream gives
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match=r"BatchNorm1d\(3\): the batch statistics of channel\(s\) 0, 1, 2 are not finite"):
        loss = model(bad).square().mean()
    scaler.scale(loss).backward()
    scaler.step(opt)  # skipped: the gradients are not finite
    scaler.update()
    opt.zero_grad()
    assert scaler.get_scale() < 2.0**16
    for k, v in model.state_dict().items():
        if k != "1.num_batches_tracked":  # the step counts, as torch's batch norm counts it
            assert torch.equal(v, state[k]), k
    model(good).square().mean().backward()
    assert torch.isfinite(model[1].running_var).all()
