"""One training run of the lab: a :class:`RunConfig` in, a JSON-ready result out.

The loop is deliberately plain: the model's loss (cross-entropy, or binary
cross-entropy for a sigmoid head, plus the spec's L2 penalty on the hidden kernels:
:func:`normlab.lab.models.loss`, :func:`~normlab.lab.models.penalty`), SGD (with
optional momentum), Adam or RMSprop (:data:`OPTIMIZERS`), mini-batches drawn without
replacement from a per-run ``torch.Generator``, weights initialized after
``torch.manual_seed(seed)``, one thread. The same config gives the
same numbers, bit for bit, in any process, which is what lets runs be cached by
:meth:`RunConfig.key` and resumed.

Every ``eval_every`` steps (and at step 0 and at the end) it logs the mean training
loss since the last log, the test accuracy, and the output of each requested probe
(:data:`PROBES`, functions of the model and a fixed probe batch of test samples).
At the end it also measures the accuracy on the training samples it trained on (the
first ``train_subset`` of the training split, or all), in eval mode like the test
accuracy, for the train/test gap.

Measurements that need more, a training batch, the loss, the optimizer, the data
(:data:`normlab.lab.measures.MEASURES`), run at those logs or once after the last step;
whatever they do to the model, the optimizer or the RNG is undone before training goes on.

``trainable`` restricts what the optimizer moves: ``"norm"`` trains only the
parameters outside the linear and convolution layers (the normalizations' scales and
shifts), ``"random"`` as many weights chosen at random, two per output unit of every
hidden linear or convolution layer (Frankle et al.'s baseline); the rest keeps its
initial values.

A loss that becomes NaN or infinite, or a normalization layer that refuses non-finite
statistics (``FloatingPointError``), ends the run as *diverged*: recorded with its step
and reason, the test accuracy of what is left of the model, never an exception.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import data as datasets
from .measures import MEASURES, TrainingStep
from .models import ACTIVATIONS, WEIGHTED, ModelSpec, as_dict, build, loss, penalty, predict

__all__ = ["RunConfig", "train", "PROBES", "probe", "RESULT_VERSION", "TRAINABLE"]

# Bump when a change to the loop changes results: cached runs of older versions are redone.
RESULT_VERSION = 2

OPTIMIZERS = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr),
    # Keras's RMSprop with its defaults (rho 0.9, epsilon 1e-7; torch's are alpha 0.99, eps
    # 1e-8): w -= lr g / (sqrt(v) + eps), v = rho v + (1 - rho) g^2 from v = 0, as Keras 2 did
    "rmsprop": lambda params, c: torch.optim.RMSprop(params, lr=c.lr, alpha=0.9, eps=1e-7),
}

TRAINABLE = ("all", "norm", "random")


@dataclass(frozen=True)
class RunConfig:
    model: ModelSpec
    data: str = "mnist1d"  # "mnist1d" or a dataset folder (see normlab.lab.data)
    optimizer: str = "sgd"  # a key of OPTIMIZERS
    lr: float = 0.1
    momentum: float = 0.0  # sgd only
    batch_size: int = 60
    steps: int = 1000
    eval_every: int = 50
    seed: int = 0
    probes: tuple[str, ...] = ()  # keys of PROBES
    probe_size: int = 500  # test samples the probes see, the same at every log
    train_subset: int = 0  # train on the first this many training samples; 0: all of them
    measures: tuple[str, ...] = ()  # keys of normlab.lab.measures.MEASURES
    trainable: str = "all"  # one of TRAINABLE

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"RunConfig: optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.batch_size < 2 or self.steps < 1 or self.eval_every < 1:
            raise ValueError("RunConfig: batch_size must be at least 2, steps and eval_every at least 1")
        if self.train_subset < 0:
            raise ValueError(f"RunConfig: train_subset must be non-negative (0: all samples), got {self.train_subset}")
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"RunConfig: unknown measures {unknown}; the measures are {sorted(MEASURES)}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"RunConfig: trainable must be one of {TRAINABLE}, got {self.trainable!r}")

    def misfit(self, dataset: datasets.Dataset) -> str | None:
        """Why this run cannot train on ``dataset`` (its network does not fit the samples,
        it needs more training samples than there are, a measure needs other data), or
        None when it can. :func:`train` raises it; ``normlab reproduce`` skips the claim."""
        reason = self.model.misfit(dataset.sample_shape, dataset.classes)
        if reason:
            return reason
        n = len(dataset.x_train)
        if self.train_subset > n:
            return f"RunConfig: train_subset {self.train_subset} exceeds the {n} training samples"
        if self.batch_size > (self.train_subset or n):
            return f"RunConfig: batch_size {self.batch_size} exceeds the {self.train_subset or n} training samples"
        for m in self.measures:
            if MEASURES[m].data not in (None, dataset.name):
                return f"RunConfig: the measure {m} needs the {MEASURES[m].data} dataset, not {dataset.name}"
        return None

    def to_dict(self) -> dict:
        """The config as JSON has it (lists, not tuples)."""
        return as_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        tuples = {k: tuple(d[k]) for k in ("probes", "measures") if k in d}
        return cls(**{**d, "model": ModelSpec(**d["model"]), **tuples})

    def key(self) -> str:
        """A hash of everything that determines the result: the cache key of this run."""
        text = json.dumps({"version": RESULT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def but(self, **changes) -> RunConfig:
        """A copy with some fields changed; ``model_*`` keywords change the model spec."""
        model = {k[6:]: changes.pop(k) for k in list(changes) if k.startswith("model_")}
        return replace(self, model=replace(self.model, **model), **changes)


# --- probes: statistics recorded during training ----------------------------------------

PROBES: dict = {}


def probe(name: str):
    """Register ``fn(model, spec, x_probe) -> JSON-ready value`` as the probe ``name``."""

    def register(fn):
        PROBES[name] = fn
        return fn

    return register


@contextlib.contextmanager
def _as_in_training(model: nn.Module):
    """Forward in training mode (batch statistics) without changing any buffer or the RNG."""
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            yield
    finally:
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)
        torch.set_rng_state(rng)
        model.train(was_training)


@probe("last_activation_input")
def last_activation_input(model: nn.Module, spec: ModelSpec, x: torch.Tensor) -> list[list[float]]:
    """15th, 50th and 85th percentiles, over the probe batch, of the input to the last
    hidden layer's activation, for its first ten units, as the network sees it in
    training (batch statistics): Ioffe & Szegedy's Fig. 1(b, c)."""
    act = [m for m in model.modules() if isinstance(m, ACTIVATIONS[spec.activation])][-1]
    seen = []
    handle = act.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach()))
    try:
        with _as_in_training(model):
            model(x)
    finally:
        handle.remove()
    units = seen[0].flatten(2).mean(2) if seen[0].dim() > 2 else seen[0]  # conv: mean over positions
    q = torch.quantile(units[:, :10].double(), torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64), dim=0)
    return q.T.tolist()  # [unit][percentile]


# --- measurements and what is trained --------------------------------------------------


@contextlib.contextmanager
def _undone(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Undo whatever happens inside to the model (parameters, buffers, gradients, modes), the optimizer's state and the RNG."""
    state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        model.load_state_dict(state)
        optimizer.load_state_dict(optimizer_state)
        for m, mode in zip(model.modules(), modes):
            m.training = mode
        for p in model.parameters():
            p.grad = None
        torch.set_rng_state(rng)


def _trainable(model: nn.Module, which: str, seed: int) -> list[nn.Parameter]:
    """The parameters the optimizer moves (see the module's docstring); the others stop requiring gradients."""
    if which == "all":
        return list(model.parameters())
    weighted = [m for m in model.modules() if isinstance(m, WEIGHTED)]
    in_weighted = {id(p) for m in weighted for p in m.parameters()}
    if which == "norm":
        chosen = [p for p in model.parameters() if id(p) not in in_weighted]
        if not chosen:
            raise ValueError("RunConfig: trainable='norm' but the model has no parameters outside its linear and convolution layers")
    else:  # "random": two weights per output unit of each hidden layer, the classifier (last) left out
        generator = torch.Generator().manual_seed(seed)
        chosen = []
        for m in weighted[:-1]:
            rows = m.weight.detach().flatten(1)
            mask = torch.zeros_like(rows)
            for row in mask:
                row[torch.randperm(row.numel(), generator=generator)[:2]] = 1
            m.weight.register_hook(lambda g, mask=mask.view_as(m.weight): g * mask)
            chosen.append(m.weight)
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


# --- the loop -----------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Fraction classified correctly in eval mode; a sample with non-finite outputs counts as wrong."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch])
            ok = (predict(out) == y[i : i + batch]) & torch.isfinite(out).all(1)
            correct += int(ok.sum())
    model.train(was_training)
    return correct / len(x)


def _batches(n: int, size: int, generator: torch.Generator):
    """Indices of mini-batches, epoch after epoch, each epoch a fresh permutation (last partial batch dropped)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - size + 1, size):
            yield order[i : i + size]


def train(config: RunConfig, dataset: datasets.Dataset | None = None) -> dict:
    """Train as ``config`` says and return the logged history (a dict of plain numbers and lists)."""
    ds = dataset if dataset is not None else datasets.load(config.data)
    reason = config.misfit(ds)
    if reason:
        raise ValueError(reason)
    n = config.train_subset or len(ds.x_train)
    x_train, y_train = ds.x_train[:n], ds.y_train[:n]
    start = time.perf_counter()
    with _one_thread():
        torch.manual_seed(config.seed)
        model = build(config.model, ds.sample_shape, ds.classes)
        optimizer = OPTIMIZERS[config.optimizer](_trainable(model, config.trainable, config.seed), config)
        generator = torch.Generator().manual_seed(config.seed)
        x_probe = ds.x_test[: config.probe_size]
        log = {"step": [], "train_loss": [], "test_accuracy": [], "probes": {p: [] for p in config.probes}}
        if config.measures:
            log["measures"] = {m: {"step": [], "value": []} for m in config.measures}

        def measure(step, idx, at):
            """Take the measurements due ``at`` ("logs" or "end"), on the model after ``step`` updates and the batch ``idx``."""
            seen = TrainingStep(step, model, optimizer, x_train[idx], y_train[idx], config, ds)
            for name in config.measures:
                if MEASURES[name].at == at:
                    with _undone(model, optimizer):
                        value = MEASURES[name].fn(seen)
                    log["measures"][name]["step"].append(step)
                    log["measures"][name]["value"].append(value)

        def record(step, losses):
            log["step"].append(step)
            log["train_loss"].append(sum(losses) / len(losses) if losses else None)
            log["test_accuracy"].append(accuracy(model, ds.x_test, ds.y_test))
            for name in config.probes:
                log["probes"][name].append(PROBES[name](model, config.model, x_probe))

        diverged = None
        losses: list[float] = []
        record(0, losses)
        model.train()
        batches = _batches(len(x_train), config.batch_size, generator)
        for step in range(1, config.steps + 1):
            idx = next(batches)
            if config.measures and (step - 1) % config.eval_every == 0:
                measure(step - 1, idx, "logs")
            try:
                objective = loss(model(x_train[idx]), y_train[idx]) + penalty(model, config.model)
                if not torch.isfinite(objective):
                    raise FloatingPointError(f"the training loss is {objective.item()}")
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
            except FloatingPointError as e:
                diverged = {"step": step, "reason": str(e)}
                break
            losses.append(objective.item())
            if step % config.eval_every == 0 or step == config.steps:
                record(step, losses)
                losses = []
        # a diverged run is judged by what is left of the model, not by its last log
        final = accuracy(model, ds.x_test, ds.y_test) if diverged else log["test_accuracy"][-1]
        if config.measures and not diverged:
            measure(config.steps, next(batches), "end")
        final_train = accuracy(model, x_train, y_train)
    return {
        **log,
        "final_test_accuracy": final,
        "final_train_accuracy": final_train,
        "classes": ds.classes,
        "diverged": diverged,
        "seconds": round(time.perf_counter() - start, 3),
    }
