"""Freeze modes (statistics, affine, both) that survive model.train(), also as a context
manager; the policy for a training batch with one value per channel."""

import pytest
import torch

import normlab


def trained(cls=normlab.BatchNorm2d, **kwargs):
    bn = cls(3, **kwargs)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
    bn(3 * torch.randn((8, 3, 2, 2) if 4 in bn._layouts else (8, 3)) + 1)
    return bn


def state(bn):
    return {k: v.clone() for k, v in bn.state_dict().items()}


@pytest.mark.parametrize("cls", [normlab.BatchNorm2d, normlab.BatchRenorm2d, normlab.GhostBatchNorm, normlab.SyncBatchNorm])
def test_frozen_statistics_survive_train_and_give_the_inference_map(backend, cls):
    bn = trained(cls)
    model = torch.nn.Sequential(torch.nn.Identity(), bn)
    bn.freeze("statistics")
    model.eval()
    x = torch.randn(8, 3, 2, 2, requires_grad=True)
    expected = model(x).detach()
    model.train()
    before = state(bn)
    y = model(x)
    assert bn.training and torch.equal(y, expected)
    y.sum().backward()
    assert x.grad is not None and bn.weight.grad is not None  # still trainable affine
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())


def test_frozen_affine_gets_no_gradient_even_if_turned_back_on():
    bn = trained()
    bn.freeze("affine")
    assert not bn.weight.requires_grad and not bn.bias.requires_grad
    bn.weight.requires_grad_(True)  # e.g. model.requires_grad_(True) later
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    tracked = bn.num_batches_tracked.item()
    bn(x).pow(2).sum().backward()
    assert bn.weight.grad is None and x.grad is not None
    assert bn.num_batches_tracked.item() == tracked + 1  # statistics still trained


def test_frozen_both_is_frozen_batch_norm():
    bn = trained()
    frozen = normlab.FrozenBatchNorm.from_batchnorm(bn.eval())
    bn.train().freeze("both")
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(bn(x), frozen(x))
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert "frozen=statistics+affine" in repr(bn)


def test_as_a_context_manager_the_previous_state_comes_back():
    bn = trained()
    bn.freeze("affine")
    with bn.freeze("statistics") as layer:
        assert layer is bn and bn.frozen_statistics and bn.frozen_affine
        with bn.unfreeze("affine"):
            assert bn.weight.requires_grad and not bn.frozen_affine and bn.frozen_statistics
        assert not bn.weight.requires_grad
    assert not bn.frozen_statistics and bn.frozen_affine
    bn.unfreeze()
    assert not bn.frozen_affine and bn.weight.requires_grad and bn.bias.requires_grad
    with bn.freeze():
        assert bn.frozen_statistics and bn.frozen_affine
    assert not bn.frozen_statistics and not bn.frozen_affine and bn.weight.requires_grad


def test_freeze_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): can freeze \('statistics', 'affine', 'both'\), got 'weights'"):
        normlab.BatchNorm1d(3).freeze("weights")
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): cannot freeze the statistics of a layer without running statistics"):
        normlab.BatchNorm1d(3, track_running_stats=False).freeze("statistics")
    normlab.BatchNorm1d(3, track_running_stats=False).freeze("affine")  # affine alone is fine


# --- one value per channel -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_policy_running_stats_normalizes_with_them_and_leaves_them(backend, shape):
    cls = normlab.BatchNorm1d if len(shape) == 2 else normlab.BatchNorm2d
    bn = cls(3, one_value_per_channel="running_stats")
    bn(3 * torch.randn(8, *shape[1:]) + 1)
    before = state(bn)
    x = torch.randn(shape)
    y = bn(x)
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())
    assert torch.equal(y, bn.eval()(x))


def test_policy_skip_update_normalizes_with_the_batch_and_leaves_the_running_statistics(backend):
    bn = trained(normlab.BatchNorm1d, one_value_per_channel="skip_update")
    before = state(bn)
    x = torch.randn(1, 3, requires_grad=True)
    y = bn(x)
    assert torch.equal(y.detach(), bn.bias.detach()[None])  # one value normalizes to 0
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(1, 3))
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())
    bn(torch.randn(2, 3))  # two values: batch norm as usual
    assert bn.num_batches_tracked.item() == before["num_batches_tracked"].item() + 1


def test_policy_is_a_keyword_after_torchs_positional_arguments():
    bn = normlab.BatchNorm1d(3, 1e-3, 0.2, False, True, None, torch.float64, one_value_per_channel="skip_update")
    assert (bn.eps, bn.momentum, bn.affine, bn.running_mean.dtype) == (1e-3, 0.2, False, torch.float64)
    assert "one_value_per_channel='skip_update'" in repr(bn)
    with pytest.raises(TypeError):
        normlab.BatchNorm1d(3, 1e-3, 0.2, False, True, None, torch.float64, "skip_update")
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): one_value_per_channel must be one of \('raise', 'running_stats', 'skip_update'\), got 'ignore'"):
        normlab.BatchNorm1d(3, one_value_per_channel="ignore")
    with pytest.raises(ValueError, match=r"one_value_per_channel='running_stats' needs running statistics"):
        normlab.BatchNorm1d(3, track_running_stats=False, one_value_per_channel="running_stats")


def test_default_policy_raises_and_says_what_to_do():
    bn = normlab.BatchRenorm1d(3)
    with pytest.raises(ValueError, match=r"BatchRenorm1d\(3\): training needs more than one value per channel.*one_value_per_channel"):
        bn(torch.randn(1, 3))
    assert bn.num_batches_tracked.item() == 0


def test_a_failing_step_leaves_the_running_statistics_alone(monkeypatch):
    bn = trained()
    before = state(bn)
    real = normlab.backends.TABLE["batch_norm"]["native"]

    def update_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(normlab.backends.TABLE["batch_norm"], "native", update_then_fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        bn(torch.randn(4, 3, 2, 2))
    assert all(torch.equal(v, before[k]) for k, v in bn.state_dict().items())
