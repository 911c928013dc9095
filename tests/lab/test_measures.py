"""Measures (normlab.lab.measures) against direct computations, the loop's extension point for them, and `trainable`."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normlab
from normlab.lab import measures, train
from normlab.lab.data import Dataset
from normlab.lab.measures import ETA_MULTIPLES, MEASURES, TrainingStep, batch_statistics_accuracy
from normlab.lab.models import ModelSpec, build
from normlab.lab.train import RunConfig

SPEC = ModelSpec("mlp", 3, 12, "relu", "bn", noise=True)


def synthetic(n=64, length=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, x_test = torch.randn(n, 1, length, generator=g), torch.randn(n // 2, 1, length, generator=g)
    y, y_test = torch.randint(0, classes, (n,), generator=g), torch.randint(0, classes, (n // 2,), generator=g)
    x_val, y_val = torch.randn(n // 4, 1, length, generator=g), torch.randint(0, classes, (n // 4,), generator=g)
    return Dataset("synthetic", x, y, x_test, y_test, classes, x_val=x_val, y_val=y_val)


def a_step(spec=SPEC, lr=0.1, optimizer="sgd", seed=0):
    ds = synthetic()
    config = RunConfig(spec, optimizer=optimizer, lr=lr, batch_size=16)
    torch.manual_seed(seed)
    model = build(spec, ds.sample_shape, ds.classes)
    model.train()
    opt = train.OPTIMIZERS[optimizer](model.parameters(), config)
    return TrainingStep(0, model, opt, ds.x_train[:16], ds.y_train[:16], config, ds)


def loss_at(model, step, rng, params=None, values=None):
    """The loss on the step's batch with the RNG at `rng`, optionally with `params` set to `values`, and its gradient."""
    model = copy.deepcopy(model)
    if values is not None:
        with torch.no_grad():
            for p, v in zip(model.parameters(), values):
                p.copy_(v)
    torch.set_rng_state(rng)
    loss = F.cross_entropy(model(step.x), step.y)
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def test_ics_is_definition_2_1():
    step = a_step()
    rng = torch.get_rng_state()
    params = list(step.model.parameters())
    _, g = loss_at(step.model, step, rng)
    linears = [i for i, p in enumerate(params) if p.dim() == 2]  # the weights of the three hidden layers and the classifier
    expected_l2, expected_cos = [], []
    for i in linears[1:]:
        moved = [p.detach() - 0.1 * gp if j < i else p.detach() for j, (p, gp) in enumerate(zip(params, g))]
        _, g2 = loss_at(step.model, step, rng, params, moved)
        expected_l2.append((g[i] - g2[i]).norm().item())
        expected_cos.append(F.cosine_similarity(g[i].flatten(), g2[i].flatten(), dim=0).item())
    torch.set_rng_state(rng)
    got = MEASURES["ics"].fn(step)
    np.testing.assert_allclose(got["l2"], expected_l2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got["cos"], expected_cos, rtol=1e-5)
    assert len(got["l2"]) == 3 and min(got["l2"]) > 0  # the noise is the same in both, so only the update shifts


def test_smoothness_along_the_gradient():
    step = a_step()
    rng = torch.get_rng_state()
    params = list(step.model.parameters())
    loss, g = loss_at(step.model, step, rng)
    flat = torch.cat([x.flatten() for x in g])
    weights = {id(m.weight) for m in step.model.modules() if isinstance(m, nn.Linear)}
    scale = [p.detach().norm() if id(p) in weights else torch.tensor(1.0) for p in params]
    relative = torch.cat([(s * x).flatten() for s, x in zip(scale, g)])  # the gradient in the layers' units
    expected = {"loss_along": [], "gradient_change": [], "beta": [], "beta_relative": []}
    for multiple in ETA_MULTIPLES:
        eta = multiple * 0.1
        moved_loss, moved_g = loss_at(step.model, step, rng, params, [p.detach() - eta * gp for p, gp in zip(params, g)])
        change = (torch.cat([x.flatten() for x in moved_g]) - flat).norm().item()
        change_relative = (torch.cat([(s * x).flatten() for s, x in zip(scale, moved_g)]) - relative).norm().item()
        distance_relative = eta * torch.cat([(x / s).flatten() for s, x in zip(scale, g)]).norm().item()
        expected["loss_along"].append(moved_loss.item())
        expected["gradient_change"].append(change)
        expected["beta"].append(change / (eta * flat.norm().item()))
        expected["beta_relative"].append(change_relative / distance_relative)
    torch.set_rng_state(rng)
    got = MEASURES["smoothness"].fn(step)
    assert got["loss"] == pytest.approx(loss.item()) and got["gradient_norm"] == pytest.approx(flat.norm().item())
    assert got["eta"] == pytest.approx([m * 0.1 for m in ETA_MULTIPLES])
    for key, values in expected.items():
        np.testing.assert_allclose(got[key], values, rtol=1e-4)


class _Stub:
    """What the smoothness measure reads of a TrainingStep, around the loss ``loss_of(W)`` of one
    bias-free linear layer's weight ``W``."""

    def __init__(self, w, loss_of, lr):
        self.model = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.model.weight.copy_(w)
        self.loss_of, self.config = loss_of, RunConfig(SPEC, lr=lr)

    def trained(self):
        return [self.model.weight]

    def loss(self):
        return self.loss_of(self.model.weight)


def test_smoothness_of_a_quadratic_by_hand():
    # L(W) = 1/2 sum a_i W_i^2 at W = (1, 1, 1), a = (1, 2, 3): g = (1, 2, 3), and a step -eta g changes
    # the gradient by -eta (1, 4, 9): beta = sqrt(98) / sqrt(14) = sqrt(7) at every step size; in the
    # layer's units (||W||^2 = 3) 3 sqrt(7); the loss along it is 1/2 sum a_i (1 - eta a_i)^2
    a = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    got = MEASURES["smoothness"].fn(_Stub(torch.ones(1, 3), lambda w: 0.5 * (a * w.double() ** 2).sum(), lr=0.1))
    assert got["loss"] == pytest.approx(3.0) and got["gradient_norm"] == pytest.approx(14**0.5)
    np.testing.assert_allclose(got["beta"], [7**0.5] * len(ETA_MULTIPLES), rtol=1e-6)
    np.testing.assert_allclose(got["beta_relative"], [3 * 7**0.5] * len(ETA_MULTIPLES), rtol=1e-6)
    np.testing.assert_allclose(got["gradient_change"], [e * 98**0.5 for e in got["eta"]], rtol=1e-6)
    np.testing.assert_allclose(got["loss_along"], [0.5 * float((a * (1 - e * a) ** 2).sum()) for e in got["eta"]], rtol=1e-6)


def test_relative_smoothness_is_invariant_to_the_scale_batch_norm_removes():
    # f(W) = L(W / ||W||) is invariant to the scale of W, as the loss is to the weight before a batch norm.
    # At c W with learning rate c^2 eta, the step lands on c times the point it lands on from W: the same
    # landscape travelled the same way. The raw beta is then c^2 times smaller; the relative one equal.
    a = torch.tensor([[1.0, 2.0, 3.0, 5.0]], dtype=torch.float64)

    def f(w):
        u = w.double() / w.double().norm()
        return (a * u**2).sum() + u.sum() ** 3

    w = torch.tensor([[0.3, -1.0, 0.6, 0.2]])
    c = 4.0
    here, scaled = (MEASURES["smoothness"].fn(_Stub(s * w, f, lr=s**2 * 0.05)) for s in (1.0, c))
    np.testing.assert_allclose(scaled["beta"], np.array(here["beta"]) / c**2, rtol=1e-4)
    np.testing.assert_allclose(scaled["beta_relative"], here["beta_relative"], rtol=1e-4)
    np.testing.assert_allclose(scaled["loss_along"], here["loss_along"], rtol=1e-5)


def test_batch_statistics_accuracy():
    step = a_step(ModelSpec("mlp", 2, 12, "relu", "bn"))
    model, ds = step.model, step.dataset
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, normlab.BatchNorm1d):
                m.bias.normal_()  # a batch of one outputs the shift: make it say something
                m.running_mean.normal_()
    before = copy.deepcopy(model.state_dict())
    model.eval()
    x, y = ds.x_test, ds.y_test
    # batch statistics by hand: BN in training mode on a copy, batch by batch
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = sum(int((reference(x[i : i + 4]).argmax(1) == y[i : i + 4]).sum()) for i in range(0, len(x), 4))
    assert batch_statistics_accuracy(model, x, y, 4) == expected / len(x)
    # batches of one: every sample normalizes to 0, every BN outputs its shift, one class for everybody
    bns = [m for m in model.modules() if isinstance(m, normlab.BatchNorm1d)]
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in bns]
    one = batch_statistics_accuracy(model, x, y, 1)
    for h in hooks:
        h.remove()
    assert len(outputs) == 2 * len(x)
    for k, out in enumerate(outputs):
        torch.testing.assert_close(out, bns[k % 2].bias.detach()[None])
    counts = torch.bincount(y, minlength=ds.classes).float() / len(y)
    assert any(one == pytest.approx(c.item()) for c in counts)  # a single predicted class
    # nothing changed: buffers, modes, the one-value policy
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training and all(m.one_value_per_channel == "raise" and m.track_running_stats for m in bns)


def test_inference_statistics_of_a_run(mnist1d):
    config = RunConfig(ModelSpec("mlp", 2, 16, "relu", "bn", norm_momentum=0.5), steps=30, eval_every=10, measures=("inference_statistics",))
    r = train.train(config, mnist1d)
    m = r["measures"]["inference_statistics"]
    assert m["step"] == [30] and set(m["value"][0]) == {"running", "precise", "batch 1", "batch 8", "batch all"}
    v = m["value"][0]
    assert v["running"] == r["final_test_accuracy"]
    assert v["batch 1"] < 0.2 and v["batch all"] > 0.2


def test_measures_do_not_change_training(mnist1d):
    plain = RunConfig(SPEC, steps=25, eval_every=10)
    measured = plain.but(measures=("ics", "smoothness", "inference_statistics", "gammas"), probes=("last_activation_input",))
    a, b = train.train(plain, mnist1d), train.train(measured, mnist1d)
    assert a["test_accuracy"] == b["test_accuracy"] and a["train_loss"] == b["train_loss"]
    assert "measures" not in a  # a run without measures has the result it always had
    logs = b["measures"]
    assert logs["ics"]["step"] == [0, 10, 20] and logs["smoothness"]["step"] == [0, 10, 20]
    assert logs["gammas"]["step"] == [25] and len(logs["gammas"]["value"][0]) == 3 * 12
    json.dumps(b)


def test_no_end_measures_after_divergence(mnist1d):
    config = RunConfig(ModelSpec("mlp", 2, 16, "relu", "none"), lr=1e12, steps=30, eval_every=10, measures=("gammas", "smoothness"))
    r = train.train(config, mnist1d)
    assert r["diverged"] is not None and r["measures"]["gammas"] == {"step": [], "value": []}


def test_a_measure_registered_elsewhere(mnist1d, monkeypatch):
    """The extension point: any function of a TrainingStep, free to change what it likes."""
    seen = []

    def vandal(step):
        seen.append((step.step, step.x.shape[0], step.config.lr))
        with torch.no_grad():
            for p in step.model.parameters():
                p.mul_(0)
        loss = step.loss()
        loss.backward()
        step.optimizer.step()
        torch.rand(100)
        return loss.item()

    monkeypatch.setitem(MEASURES, "vandal", measures.Measure(vandal, "logs"))
    base = RunConfig(ModelSpec("mlp", 1, 8, "relu", "bn"), optimizer="adam", lr=0.01, steps=12, eval_every=5, batch_size=20)
    a = train.train(base, mnist1d)
    b = train.train(base.but(measures=("vandal",)), mnist1d)
    assert a["test_accuracy"] == b["test_accuracy"] and a["train_loss"] == b["train_loss"]
    assert seen == [(0, 20, 0.01), (5, 20, 0.01), (10, 20, 0.01)]
    assert b["measures"]["vandal"]["value"] == pytest.approx([np.log(10)] * 3, rel=1e-5)  # zero weights: uniform outputs


@pytest.mark.parametrize("spec", [ModelSpec("mlp", 2, 12, "relu", "bn"), ModelSpec("cnn", 2, 6, "relu", "bn", final_width=5)])
def test_trainable_norm_and_random(mnist1d, spec):
    from normlab.lab.claims.bn_only_training import norm_parameters

    def changed(trainable):
        config = RunConfig(spec, optimizer="adam", lr=0.01, steps=5, eval_every=5, trainable=trainable)
        torch.manual_seed(config.seed)
        start = build(spec, mnist1d.sample_shape, mnist1d.classes).state_dict()
        model = {}

        def keep(step):
            model.update(step.model.state_dict())
            return None

        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(MEASURES, "keep", measures.Measure(keep, "end"))
            train.train(config.but(measures=("keep",)), mnist1d)
        return {k: (model[k] != v) for k, v in start.items() if v.is_floating_point() and "running" not in k}

    norm = changed("norm")
    moved = {k for k, d in norm.items() if d.any()}
    assert moved and all(k.split(".")[-1] in ("weight", "bias") and norm[k].all() for k in moved)
    assert sum(int(d.sum()) for d in norm.values()) == sum(2 * m.num_features for m in build(spec, mnist1d.sample_shape, 10).modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase))
    assert all(".weight" in k or ".bias" in k for k in moved)
    random = changed("random")
    counts = {k: int(d.sum()) for k, d in random.items() if d.any()}
    weights = [k for k, v in build(spec, mnist1d.sample_shape, 10).state_dict().items() if v.dim() >= 2][:-1]
    assert set(counts) == set(weights)  # the hidden layers' weights only: no BN parameter, not the classifier
    for k in weights:
        per_row = random[k].flatten(1).sum(1)
        assert (per_row == 2).all(), k  # two per output unit
    if spec.kind == "cnn":
        assert sum(counts.values()) == norm_parameters(spec) == sum(int(d.sum()) for d in norm.values())


def test_config_with_measures_round_trips():
    config = RunConfig(SPEC, measures=("ics", "gammas"), trainable="norm")
    d = json.loads(json.dumps(config.to_dict()))
    assert d["measures"] == ["ics", "gammas"] and d["model"]["noise"] is True
    assert RunConfig.from_dict(d) == config and RunConfig.from_dict(d).key() == config.key()
    assert len({config.key(), config.but(trainable="random").key(), config.but(measures=("ics",)).key()}) == 3


def test_bad_measures_and_trainable(mnist1d):
    with pytest.raises(ValueError, match=r"RunConfig: unknown measures \['icss'\]"):
        RunConfig(SPEC, measures=("icss",))
    with pytest.raises(ValueError, match="trainable must be one of"):
        RunConfig(SPEC, trainable="gamma")
    with pytest.raises(ValueError, match="trainable='norm' but the model has no parameters outside"):
        train.train(RunConfig(ModelSpec("mlp", 1, 4), steps=2, trainable="norm"), mnist1d)
    with pytest.raises(ValueError, match="at must be 'logs', 'end' or 'all'"):
        measures.measure("x", at="start")
    step = a_step()
    images = synthetic(length=16)
    images = Dataset("images", *(t.view(len(t), 1, 4, 4) if t.dim() == 3 else t for t in (images.x_train, images.y_train, images.x_test, images.y_test)),
                     images.classes, x_val=images.x_val, y_val=images.y_val)
    with pytest.raises(ValueError, match=r"needs sequences \(C, L\), got samples of shape \(1, 4, 4\)"):
        MEASURES["longer_sequences"].fn(TrainingStep(0, step.model, step.optimizer, step.x, step.y, step.config, images))


def test_longer_sequences_tests_on_the_test_split_embedded_in_noise():
    """At the training length the plain test accuracy; longer, the accuracy on data.embedded's sequences (seed 0)."""
    from normlab.lab import data

    step = a_step(ModelSpec("rnn", 1, 6, "tanh", "ln"))
    ds = step.dataset
    assert measures.sequence_lengths(40) == (40, 60, 80) and measures.sequence_lengths(10) == (10, 15, 20)
    out = MEASURES["longer_sequences"].fn(step)
    assert list(out) == ["10", "15", "20"]
    assert out["10"] == train.accuracy(step.model, ds.x_test, ds.y_test)
    for n in (15, 20):
        assert out[str(n)] == train.accuracy(step.model, data.embedded(ds.x_test, n, seed=0)[0], ds.y_test)


def test_gammas_lists_every_normalization_scale():
    step = a_step(ModelSpec("rnn", 1, 4, "tanh", "bn_step"))
    with torch.no_grad():
        step.model.norms[0].weight.copy_(torch.arange(12.0))
    assert MEASURES["gammas"].fn(step) == list(range(12))
    assert MEASURES["gammas"].fn(a_step(ModelSpec("mlp", 2, 3, "relu", "bn"))) == [1.0] * 6
    assert isinstance(nn.Linear(1, 1), measures.WEIGHTED)
