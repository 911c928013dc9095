"""Measurements taken during a run that need more than a probe gets: a training step.

A probe (:data:`normlab.lab.train.PROBES`) sees the model and a fixed batch of test
samples. A *measure* sees a :class:`TrainingStep`: the model and its optimizer after
``step`` updates, the training batch of the next step, the loss on it, the run's
config and data. It runs at every log (``at="logs"``: on the state after 0,
``eval_every``, ``2 * eval_every``, ... updates), once after the last step
(``at="end"``) or at both (``at="all"``), and may do anything to the model, the
optimizer and the RNG: the loop undoes it all before training goes on, so a measured
run trains exactly as an unmeasured one. Its JSON-ready values go to the result's ``measures[name]`` as
``{"step": [...], "value": [...]}``.

The measures here:

* ``ics``: internal covariate shift by Santurkar et al. 2018's Definition 2.1;
* ``smoothness``: the loss landscape along the gradient (Santurkar et al. Sec. 3.1);
* ``inference_statistics``: test accuracy under each kind of normalization statistics;
* ``longer_sequences``: test accuracy on the test sequences embedded in longer ones of noise;
* ``gammas``: the normalizations' scales at the end;
* ``heldout``: loss and accuracy on the validation and test splits, at every log and at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..tools._common import is_batchnorm
from ..tools.precise import precise_batchnorm
from . import data as datasets
from . import models
from .models import WEIGHTED

if TYPE_CHECKING:
    from .train import RunConfig

__all__ = [
    "MEASURES", "Measure", "TrainingStep", "measure", "ETA_MULTIPLES", "LENGTH_FACTORS", "sequence_lengths",
    "batch_statistics_accuracy", "evaluate",
]


class Measure(NamedTuple):
    fn: Callable[[TrainingStep], Any]
    at: str  # "logs", "end" or "all" (both)
    data: str | None = None  # the one dataset it can measure on; None: any


MEASURES: dict[str, Measure] = {}


def measure(name: str, at: str = "logs", data: str | None = None):
    """Register ``fn(step: TrainingStep) -> JSON-ready value`` as the measure ``name``, taken at
    every log, at the end or at both (``"all"``); ``data`` names the one dataset it can measure
    on, if only one."""
    if at not in ("logs", "end", "all"):
        raise ValueError(f"measure {name!r}: at must be 'logs', 'end' or 'all', got {at!r}")

    def register(fn):
        MEASURES[name] = Measure(fn, at, data)
        return fn

    return register


@dataclass(frozen=True)
class TrainingStep:
    """The state of a run as a measure sees it: after ``step`` updates, with the next training batch ``(x, y)``."""

    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    config: RunConfig
    dataset: datasets.Dataset

    def loss(self) -> torch.Tensor:
        """The training loss on this batch, as the loop computes it (the model in its current mode)."""
        return models.loss(self.model(self.x), self.y) + models.penalty(self.model, self.config.model)

    def trained(self) -> list[nn.Parameter]:
        """The parameters training moves, in the model's order (for a Sequential: forward order)."""
        return [p for p in self.model.parameters() if p.requires_grad]


def _gradient(step: TrainingStep, wrt: list[torch.Tensor], rng: torch.Tensor) -> list[torch.Tensor]:
    """The loss's gradient with the RNG at ``rng``: the same dropout masks and noise on every call."""
    torch.set_rng_state(rng)
    return list(torch.autograd.grad(step.loss(), wrt))


@measure("ics")
def internal_covariate_shift(step: TrainingStep) -> dict:
    """Santurkar et al. 2018, Definition 2.1, for every linear or convolution layer ``i`` but the first.

    ``G_i`` is the gradient of the loss on this batch with respect to layer ``i``'s
    weight; ``G'_i`` the same gradient after every parameter before layer ``i`` (in
    the model's order) has taken this step's update, the optimizer's step computed
    from the full gradient, while layer ``i`` and those after it have not. Returns
    ``{"l2": [||G_i - G'_i||], "cos": [cos(G_i, G'_i)]}``, one entry per layer. The
    randomness (noise, dropout) is the same in both: the shift measured is the one
    the other layers' update causes.
    """
    params = step.trained()
    index = {id(p): i for i, p in enumerate(params)}
    layers = [m.weight for m in step.model.modules() if isinstance(m, WEIGHTED) and id(m.weight) in index][1:]
    rng = torch.get_rng_state()
    before_grads = _gradient(step, params, rng)
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, before_grads):
        p.grad = g.clone()
    step.optimizer.step()
    after = [p.detach().clone() for p in params]
    out: dict[str, list[float]] = {"l2": [], "cos": []}
    for w in layers:
        i = index[id(w)]
        with torch.no_grad():
            for j, p in enumerate(params):
                p.copy_(after[j] if j < i else before[j])
        (shifted,) = _gradient(step, [w], rng)
        g = before_grads[i]
        out["l2"].append(float((g - shifted).norm()))
        out["cos"].append(float(F.cosine_similarity(g.flatten(), shifted.flatten(), dim=0)))
    return out


# The steps of `smoothness`, in units of the step training takes (learning rate x gradient): a
# half-octave either side of it, so that the effective beta describes the landscape training moves
# through and no step far smaller than training's decides the maximum.
ETA_MULTIPLES = (2**-0.5, 1.0, 2**0.5)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def layer_scales(model: nn.Module, params: list[nn.Parameter]) -> list[float]:
    """The unit each parameter is measured in by the scale-invariant smoothness: the norm of a
    linear or convolution layer's weight (1 where it is 0), 1 for every other parameter (biases, norms' scales and shifts)."""
    weights = {id(m.weight) for m in model.modules() if isinstance(m, WEIGHTED)}
    return [(p.detach().norm().item() or 1.0) if id(p) in weights else 1.0 for p in params]


@measure("smoothness")
def smoothness(step: TrainingStep) -> dict:
    """The loss landscape along the gradient ``g`` at ``w`` (Santurkar et al. 2018, Sec. 3.1, Fig. 4).

    For each step size ``eta`` in :data:`ETA_MULTIPLES` times the run's learning rate
    (around the step SGD takes from ``w``): the loss ``L(w - eta g)``, the gradient's
    change ``||g(w) - g(w - eta g)||`` ("gradient predictiveness": small when the
    gradient stays predictive), and their ratio to the distance moved,
    ``beta = ||g(w) - g(w - eta g)|| / ||eta g||``, whose maximum over the steps is
    Santurkar et al.'s "effective beta-smoothness".

    ``beta_relative`` is the same ratio in the scale-invariant form: every layer's
    weight ``W_l`` measured in units of its norm (:func:`layer_scales`), the distance
    ``sqrt(sum_l ||eta g_l||^2 / ||W_l||^2)`` and the gradient's change
    ``sqrt(sum_l ||W_l||^2 ||dg_l||^2)``; for one layer, ``beta * ||W||^2``. Batch norm
    makes the loss invariant to the scale of the weight before it, so that its raw
    gradients scale as ``1 / ||W||`` and its raw beta as ``1 / ||W||^2``: a network whose
    weights grew has a smaller raw beta on the same landscape. ``beta_relative`` does
    not change when such a weight is rescaled (for a given distance in those units).

    All on this batch, with the same randomness at every point; non-finite values are
    recorded as None.
    """
    params = step.trained()
    scales = torch.tensor(layer_scales(step.model, params), dtype=torch.float64)
    rng = torch.get_rng_state()

    def loss_and_gradient():
        torch.set_rng_state(rng)
        loss = step.loss()
        return loss.item(), list(torch.autograd.grad(loss, params))

    def norm(tensors, scale_power=0):
        """``sqrt(sum_l s_l^(2 scale_power) ||t_l||^2)``: plain (0), or in the layers' units (+1 for gradients, -1 for moves)."""
        squares = torch.stack([t.detach().double().pow(2).sum() for t in tensors])
        return float((squares * scales ** (2 * scale_power)).sum().sqrt())

    start = [p.detach().clone() for p in params]
    loss, g = loss_and_gradient()
    g_norm, g_relative = norm(g), norm(g, -1)
    out = {
        "loss": _finite(loss), "gradient_norm": _finite(g_norm), "eta": [], "loss_along": [], "gradient_change": [],
        "beta": [], "beta_relative": [],
    }
    for multiple in ETA_MULTIPLES:
        eta = multiple * step.config.lr
        with torch.no_grad():
            for p, w, gp in zip(params, start, g):
                p.copy_(w - eta * gp)
        moved_loss, moved_g = loss_and_gradient()
        dg = [a - b for a, b in zip(moved_g, g)]
        change, change_relative = norm(dg), norm(dg, 1)
        out["eta"].append(eta)
        out["loss_along"].append(_finite(moved_loss))
        out["gradient_change"].append(_finite(change))
        out["beta"].append(_finite(change / (eta * g_norm)) if g_norm > 0 else None)
        out["beta_relative"].append(_finite(change_relative / (eta * g_relative)) if g_relative > 0 else None)
    return out


def batch_statistics_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Test accuracy with every batch norm normalizing by the statistics of the test batch
    (consecutive batches of ``batch`` samples), as in training, the rest of the model as at
    inference. A batch of one normalizes each value by itself: to 0, so the batch norm
    outputs its shift (normlab's ``one_value_per_channel="skip_update"``). Running
    statistics are not updated; a sample with non-finite outputs counts as wrong."""
    bns = [m for m in model.modules() if is_batchnorm(m)]
    was = [(m.training, m.track_running_stats, getattr(m, "one_value_per_channel", None)) for m in bns]
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        for m in bns:
            m.train()
            m.track_running_stats = False  # batch statistics, nothing written to the running ones
            if hasattr(m, "one_value_per_channel"):
                m.one_value_per_channel = "skip_update"
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out = model(x[i : i + batch])
                correct += int(((models.predict(out) == y[i : i + batch]) & torch.isfinite(out).all(1)).sum())
    finally:
        for m, (training, track, policy) in zip(bns, was):
            m.track_running_stats = track
            if policy is not None:
                m.one_value_per_channel = policy
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    return correct / len(x)


TEST_BATCHES = (1, 8)  # test batch sizes of `inference_statistics`, besides the whole test set


@measure("inference_statistics", at="end")
def inference_statistics(step: TrainingStep) -> dict:
    """Test accuracy of the trained model under each kind of normalization statistics:

    ``running``: its running averages (what ``model.eval()`` uses; their momentum is the
    model spec's ``norm_momentum``); ``precise``: population statistics recomputed
    exactly over the training set (:func:`normlab.precise_batchnorm`, batches of the
    run's batch size); ``batch 1``, ``batch 8``, ``batch all``: each test batch's own
    statistics (:func:`batch_statistics_accuracy`).
    """
    from .train import accuracy

    ds, model = step.dataset, step.model
    out = {"running": accuracy(model, ds.x_test, ds.y_test)}
    for size in (*TEST_BATCHES, len(ds.x_test)):
        label = "all" if size == len(ds.x_test) else size
        out[f"batch {label}"] = batch_statistics_accuracy(model, ds.x_test, ds.y_test, size)
    b = step.config.batch_size
    precise_batchnorm(model, [ds.x_train[i : i + b] for i in range(0, len(ds.x_train), b)], progress=False)
    out["precise"] = accuracy(model, ds.x_test, ds.y_test)
    return out


LENGTH_FACTORS = (1, 1.5, 2)  # the test lengths of `longer_sequences`, in multiples of the training length
EMBEDDING_SEED = 0  # the offsets and noise of the longer test sequences: the same for every run


def sequence_lengths(steps: int) -> tuple[int, ...]:
    """The test sequence lengths of :func:`longer_sequences` for sequences of ``steps`` steps: 40, 60, 80 for MNIST-1D."""
    return tuple(round(f * steps) for f in LENGTH_FACTORS)


@measure("longer_sequences", at="end")
def longer_sequences(step: TrainingStep) -> dict:
    """Test accuracy on the test sequences embedded in longer ones, keyed by length (:func:`sequence_lengths`).

    Each test sequence is placed intact at a random offset inside a sequence of standard
    normal noise (the lab's data is standardized: the noise has the data's spread),
    :func:`normlab.lab.data.embedded`; at the training length that is the test split
    itself. The offsets and the noise are the same for every run.
    """
    from .train import accuracy

    ds = step.dataset
    if len(ds.sample_shape) != 2:
        raise ValueError(f"the longer_sequences measure needs sequences (C, L), got samples of shape {ds.sample_shape}")
    return {
        str(n): accuracy(step.model, datasets.embedded(ds.x_test, n, seed=EMBEDDING_SEED)[0], ds.y_test)
        for n in sequence_lengths(ds.sample_shape[-1])
    }


@measure("gammas", at="end")
def gammas(step: TrainingStep) -> list[float]:
    """The scale (gamma, ``weight``) of every normalization layer at the end, all channels in one list."""
    return [
        float(v)
        for m in step.model.modules()
        if not isinstance(m, WEIGHTED) and m._parameters.get("weight") is not None
        for v in m.weight.detach().flatten()
    ]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: models.ModelSpec, batch: int = 1000) -> tuple:
    """``(loss, accuracy)`` of ``model`` in eval mode on ``(x, y)``, in batches of ``batch``.

    The loss is the training objective's, the mean classifier loss plus the spec's kernel
    penalty (as Keras's ``val_loss`` includes its regularizers), None when not finite; a
    sample with non-finite outputs counts as wrong.
    """
    modes = [m.training for m in model.modules()]
    model.eval()
    total, correct = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out, labels = model(x[i : i + batch]), y[i : i + batch]
                total += float(models.loss(out, labels)) * len(labels)
                correct += int(((models.predict(out) == labels) & torch.isfinite(out).all(1)).sum())
            objective = total / len(x) + float(models.penalty(model, spec))
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    return _finite(objective), correct / len(x)


@measure("heldout", at="all")
def heldout(step: TrainingStep) -> dict:
    """Loss and accuracy (:func:`evaluate`) on the validation and the test split: the curves
    Keras's ``fit(validation_data=...)`` reports after every epoch (log the run every epoch)."""
    ds, spec = step.dataset, step.config.model
    val_loss, val_accuracy = evaluate(step.model, ds.x_val, ds.y_val, spec)
    test_loss, test_accuracy = evaluate(step.model, ds.x_test, ds.y_test, spec)
    return {
        "val_loss": val_loss, "val_accuracy": val_accuracy, "test_loss": test_loss, "test_accuracy": test_accuracy,
        "val_samples": len(ds.x_val), "test_samples": len(ds.x_test),  # an accuracy's resolution is one sample of these
    }
