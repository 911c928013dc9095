"""The lab's training: :class:`RunConfig` in, a JSON-ready result out, many runs at once.

The loop is deliberately plain: the model's loss (cross-entropy, or binary
cross-entropy for a sigmoid head, plus the spec's L2 penalty on the hidden kernels:
:func:`normlab.lab.models.loss`, :func:`~normlab.lab.models.penalty`), SGD (with
optional momentum), Adam or RMSprop (:data:`OPTIMIZERS`), mini-batches drawn without
replacement from a per-run ``torch.Generator``, weights initialized after
``torch.manual_seed(seed)``, one thread. The same config gives the same numbers, bit
for bit, in any process on the same machine and software, which is what lets runs be
cached by :meth:`RunConfig.key` and resumed. A run's data is prepared as ``preprocess``
says (:data:`normlab.lab.data.PREPROCESS`) and each training batch augmented as
``augment`` says (:data:`normlab.lab.augment.AUGMENTATIONS`), with a random stream of
its own, so that augmenting leaves the mini-batch order as it is.

Runs that differ only in their seed and initial weights (``init``, ``init_scale``: the
same :func:`group_key`) train together as one stacked model (:mod:`normlab.lab.stacked`,
:func:`train_group`): each *member* keeps its own initialization, mini-batch order, random stream for
dropout and noise, normalization statistics, optimizer state and divergence, and its
result does not depend on which group it trained in, or how large (bit for bit; the
tests check it). :func:`train` is a group of one. :func:`train_separately` is the same
training written plainly, one ``nn.Module`` at a time: the oracle the stacked runner
is tested against (equal up to rounding) and the baseline of its benchmark.

A group trains on one device (``device``: :func:`resolve_device`): the data, the
stacked model and its optimizer live there, and between two logs the host never
waits for it. The steps of a log interval are queued with their mini-batch indices
drawn beforehand; each member's losses and a flag "non-finite loss or statistics"
stay on the device, read once at the log. Should a flag be up, the interval is
replayed from a copy taken at its start, step by step with the checks on the host,
so that a diverged member ends exactly where a checked loop would end it (the
replay is rare: it happens once per divergence). On a GPU the members' random
streams are the device's generators, seeded with each run's seed: the numbers
differ from a CPU run's (as they do from one CPU to another), and the fingerprint
says which device trained each run.

Every ``eval_every`` steps (and at step 0 and at the end) it logs the mean training
loss since the last log, the validation and the test accuracy (tuning reads the
validation split's, verdicts the test split's), and the output of each requested probe
(:data:`PROBES`, functions of the model and a fixed probe batch of test samples).
At the end it also measures the accuracy on the training samples it trained on (the
first ``train_subset`` of the training split, or all), in eval mode like the test
accuracy, for the train/test gap.

Measurements that need more, a training batch, the loss, the optimizer, the data
(:data:`normlab.lab.measures.MEASURES`), run at those logs, once after the last step,
or both, on the member copied into a plain model and optimizer with the run's random
stream; whatever they do is undone before training goes on.

``trainable`` restricts what the optimizer moves: ``"norm"`` trains only the
parameters outside the linear and convolution layers (the normalizations' scales and
shifts), ``"random"`` as many weights chosen at random, two per output unit of every
hidden linear or convolution layer (Frankle et al.'s baseline); the rest keeps its
initial values.

A loss that becomes NaN or infinite, or a batch norm whose running statistics would
become non-finite (normlab's layers refuse them with ``FloatingPointError``), ends the
run as *diverged*: recorded with its step and reason, judged by the test accuracy of
what is left of the model, never an exception; the rest of its group trains on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..tools._common import label
from . import data as datasets
from . import stacked
from .augment import AUGMENTATIONS
from .measures import MEASURES, TrainingStep
from .models import ACTIVATIONS, WEIGHTED, ModelSpec, as_dict, build, later, loss, penalty, predict

__all__ = [
    "RunConfig", "train", "train_group", "train_separately", "group_key", "PROBES", "probe", "RESULT_VERSION", "TRAINABLE",
    "DEVICES", "DeviceError", "resolve_device",
]

# Bump when a change to the loop changes results: cached runs of older versions are redone.
RESULT_VERSION = 4

OPTIMIZERS = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr),
    # Keras's RMSprop with its defaults (rho 0.9, epsilon 1e-7; torch's are alpha 0.99, eps
    # 1e-8): w -= lr g / (sqrt(v) + eps), v = rho v + (1 - rho) g^2 from v = 0, as Keras 2 did
    "rmsprop": lambda params, c: torch.optim.RMSprop(params, lr=c.lr, alpha=0.9, eps=1e-7),
}

TRAINABLE = ("all", "norm", "random")
AUGMENT_STREAM = 2**32  # the augmentation's generator is seeded with seed + this: a stream apart from the batch order's


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
    # fields added later (see models.later): what the source experiments need
    preprocess: str = later("standardize")  # a key of normlab.lab.data.PREPROCESS
    augment: str = later("none")  # a key of normlab.lab.augment.AUGMENTATIONS

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"RunConfig: optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.batch_size < 2 or self.steps < 1 or self.eval_every < 1:
            raise ValueError("RunConfig: batch_size must be at least 2, steps and eval_every at least 1")
        if self.train_subset < 0:
            raise ValueError(f"RunConfig: train_subset must be non-negative (0: all samples), got {self.train_subset}")
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown:  # a claim's own measure (inference_latency, ...) is known once the claims are imported
            from . import claims  # noqa: F401

            unknown = [m for m in self.measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"RunConfig: unknown measures {unknown}; the measures are {sorted(MEASURES)}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"RunConfig: trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.preprocess not in datasets.PREPROCESS:
            raise ValueError(f"RunConfig: preprocess must be one of {sorted(datasets.PREPROCESS)}, got {self.preprocess!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"RunConfig: augment must be one of {sorted(AUGMENTATIONS)}, got {self.augment!r}")

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
        if self.augment != "none" and len(dataset.sample_shape) != 3:
            return f"RunConfig: the augmentation {self.augment} transforms images (C, H, W), the samples have shape {dataset.sample_shape}"
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


# --- devices -------------------------------------------------------------------------------

DEVICES = ("cpu", "cuda", "auto")


class DeviceError(ValueError):
    """A device that cannot be used here (CUDA asked for where there is none)."""


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The device ``device`` names: ``"cpu"``, ``"cuda"`` (or ``"cuda:1"``), or ``"auto"`` (CUDA
    when this process sees a GPU, else the CPU). CUDA asked for where there is none is a
    :class:`DeviceError` saying why."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in DEVICES[:2]:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA device"
        raise DeviceError(f"device {name}: CUDA is not available here ({why}; torch {torch.__version__}); use cpu or auto")
    return torch.device(name)


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


def _trainable(model: nn.Module, which: str, seed: int) -> tuple[list[nn.Parameter], dict[int, torch.Tensor]]:
    """The parameters the optimizer moves (see the module's docstring), and the gradient mask
    of each that is only partly trained (by ``id``); the others stop requiring gradients."""
    masks: dict[int, torch.Tensor] = {}
    if which == "all":
        return list(model.parameters()), masks
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
            masks[id(m.weight)] = mask.view_as(m.weight)
            chosen.append(m.weight)
    _restrict(model, chosen, masks)
    return chosen, masks


def _restrict(model: nn.Module, chosen: list[nn.Parameter], masks: dict[int, torch.Tensor]) -> None:
    """Only ``chosen`` require gradients; a masked one's gradient is multiplied by its mask."""
    ids = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
        if id(p) in masks:
            p.register_hook(lambda g, mask=masks[id(p)]: g * mask)


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


EVAL_BATCH = 125  # samples per forward pass when evaluating a group: a constant, so that no member's numbers depend on K


def _accuracies(net: nn.Module, K: int, x: torch.Tensor, y: torch.Tensor, batch: int = EVAL_BATCH) -> list[float]:
    """:func:`accuracy` of each member of the stacked ``net`` on the same samples."""
    was_training = net.training
    net.eval()
    correct = torch.zeros(K, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch]
            out = net(chunk.transpose(0, 1).unsqueeze(0).expand(K, *chunk.transpose(0, 1).shape))  # (K, classes, M)
            predicted = (out[:, 0] > 0).long() if out.shape[1] == 1 else out.argmax(1)  # models.predict, per member
            ok = (predicted == y[i : i + batch]) & torch.isfinite(out).all(1)
            correct += ok.sum(1)
    net.train(was_training)
    return [c / len(x) for c in correct.tolist()]


def _batches(n: int, size: int, generator: torch.Generator):
    """Indices of mini-batches, epoch after epoch, each epoch a fresh permutation (last partial batch dropped)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n - size + 1, size):
            yield order[i : i + size]


def group_key(config: RunConfig) -> str:
    """What the runs of one group share: everything but the seed and the initial weights (scheme and scale)."""
    return config.but(seed=0, model_init_scale=1.0, model_init="torch").key()


def train(config: RunConfig, dataset: datasets.Dataset | None = None) -> dict:
    """Train as ``config`` says and return the logged history (a dict of plain numbers and lists)."""
    return train_group([config], dataset)[0]


def train_group(configs: list[RunConfig], dataset: datasets.Dataset | None = None, device: str | torch.device = "cpu") -> list[dict]:
    """Train the runs ``configs``, which share everything but their seed and initial weights
    (:func:`group_key`), as one stacked model (:mod:`normlab.lab.stacked`) on ``device``
    (:func:`resolve_device`); return each run's result, the same whatever else trains with it."""
    configs = list(configs)
    if not configs:
        return []
    first = configs[0]
    if any(group_key(c) != group_key(first) for c in configs):
        raise ValueError("train_group: the runs of a group may differ only in their seed, model.init and model.init_scale")
    ds = dataset if dataset is not None else datasets.load(first.data, first.preprocess)
    x_train, y_train = _training_split(first, ds)
    where = resolve_device(device)
    if where.type != "cpu":
        ds = replace(ds, **{k: getattr(ds, k).to(where) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")})
        x_train, y_train = x_train.to(where), y_train.to(where)
    start = time.perf_counter()
    with _one_thread():
        return _Group(configs, ds, x_train, y_train, where).run(start)


def _training_split(config: RunConfig, ds: datasets.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples the run trains on (the first ``train_subset``, or all); a run that cannot
    train on ``ds`` (:meth:`RunConfig.misfit`) raises its reason."""
    reason = config.misfit(ds)
    if reason:
        raise ValueError(reason)
    n = config.train_subset or len(ds.x_train)
    return ds.x_train[:n], ds.y_train[:n]


def train_separately(config: RunConfig, dataset: datasets.Dataset | None = None) -> dict:
    """The same training as :func:`train`, written plainly: one run, one ``nn.Module`` from
    :func:`~normlab.lab.models.build`, the global RNG for its dropout and noise. It gives the
    same numbers up to rounding, not bit for bit (other kernels); it is the oracle the
    vectorized runner is tested against, and the baseline of its benchmark."""
    ds = dataset if dataset is not None else datasets.load(config.data, config.preprocess)
    x_train, y_train = _training_split(config, ds)
    start = time.perf_counter()
    with _one_thread():
        torch.manual_seed(config.seed)
        model = build(config.model, ds.sample_shape, ds.classes)
        optimizer = OPTIMIZERS[config.optimizer](_trainable(model, config.trainable, config.seed)[0], config)
        generator = torch.Generator().manual_seed(config.seed)
        augment = AUGMENTATIONS[config.augment]
        augment_generator = torch.Generator().manual_seed(config.seed + AUGMENT_STREAM)
        x_probe = ds.x_test[: config.probe_size]
        log = {"step": [], "train_loss": [], "val_accuracy": [], "test_accuracy": [], "probes": {p: [] for p in config.probes}}
        if config.measures:
            log["measures"] = {m: {"step": [], "value": []} for m in config.measures}

        def measure(step, idx, x_batch, at):
            """Take the measurements due ``at`` ("logs" or "end"), on the model after ``step`` updates and the batch ``idx`` (as ``x_batch``)."""
            seen = TrainingStep(step, model, optimizer, x_batch, y_train[idx], config, ds)
            for name in config.measures:
                if MEASURES[name].at in (at, "all"):
                    with _undone(model, optimizer):
                        value = MEASURES[name].fn(seen)
                    log["measures"][name]["step"].append(step)
                    log["measures"][name]["value"].append(value)

        def record(step, losses):
            log["step"].append(step)
            log["train_loss"].append(sum(losses) / len(losses) if losses else None)
            log["val_accuracy"].append(accuracy(model, ds.x_val, ds.y_val))
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
            x_batch = x_train[idx] if augment is None else augment(x_train[idx], augment_generator)
            if config.measures and (step - 1) % config.eval_every == 0:
                measure(step - 1, idx, x_batch, "logs")
            try:
                objective = loss(model(x_batch), y_train[idx]) + penalty(model, config.model)
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
        final = accuracy(model, ds.x_test, ds.y_test) if diverged else log["test_accuracy"][-1]
        final_val = accuracy(model, ds.x_val, ds.y_val) if diverged else log["val_accuracy"][-1]
        if config.measures and not diverged:
            idx = next(batches)
            measure(config.steps, idx, x_train[idx] if augment is None else augment(x_train[idx], augment_generator), "end")
        final_train = accuracy(model, x_train, y_train)
    return {
        **log,
        "final_val_accuracy": final_val,
        "final_test_accuracy": final,
        "final_train_accuracy": final_train,
        "classes": ds.classes,
        "val_samples": len(ds.x_val),
        "test_samples": len(ds.x_test),
        "diverged": diverged,
        "seconds": round(time.perf_counter() - start, 3),
    }


class _Group:
    """The state of one group's training; :meth:`run` is the loop."""

    def __init__(self, configs, ds: datasets.Dataset, x_train: torch.Tensor, y_train: torch.Tensor, device: torch.device) -> None:
        self.configs, self.ds, self.x_train, self.y_train, self.device = configs, ds, x_train, y_train, device
        self.K = K = len(configs)
        first = configs[0]
        # each member as its separate run would be: weights after manual_seed(seed), then its random stream
        self.members, self.generators, member_masks = [], [], []
        for c in configs:
            torch.manual_seed(c.seed)
            m = build(c.model, ds.sample_shape, ds.classes)
            member_masks.append(_trainable(m, c.trainable, c.seed)[1])
            self.members.append(m.to(device))
            if device.type == "cpu":  # the stream a separate run's dropout would draw from: the global one after build
                g = torch.Generator()
                g.set_state(torch.get_rng_state())
            else:
                g = torch.Generator(device).manual_seed(c.seed)
            self.generators.append(g)
        self.net = stacked.stack(self.members).to(device)
        stacked.set_generators(self.net, self.generators)
        member_params = [list(m.parameters()) for m in self.members]
        chosen, masks = [], {}
        for i, p in enumerate(self.net.parameters()):
            if member_params[0][i].requires_grad:
                chosen.append(p)
                if id(member_params[0][i]) in member_masks[0]:
                    masks[id(p)] = torch.stack([member_masks[k][id(member_params[k][i])] for k in range(K)]).view_as(p).to(device)
        _restrict(self.net, chosen, masks)
        self.optimizer = OPTIMIZERS[first.optimizer](chosen, first)
        self.plain_optimizers: dict[int, torch.optim.Optimizer] = {}
        self.batches = [_batches(len(x_train), first.batch_size, torch.Generator().manual_seed(c.seed)) for c in configs]
        self.augment = AUGMENTATIONS[first.augment]
        self.augment_generators = [torch.Generator().manual_seed(c.seed + AUGMENT_STREAM) for c in configs]
        # the running statistics, saved before each step: a member whose statistics turn non-finite keeps its old ones
        self.norms = [
            (name, [b for b in m.norm._buffers.values() if b is not None and b.dim()])
            for name, m in self.net.named_modules()
            if isinstance(m, (stacked.ChannelNorm, stacked.GhostNorm))
        ]
        self.statistics = [b for _, buffers in self.norms for b in buffers]
        self.kernels = [m.weight for m in self.net.modules() if isinstance(m, (stacked.Linear, stacked.Conv))][:-1]
        self.alive = [True] * K
        self.living_index = torch.arange(K, device=device)  # self.living(), as the device indexes with it
        self.diverged: list[dict | None] = [None] * K
        self.final_model: dict[int, nn.Module] = {}  # of each diverged member, what was left of it
        self.losses: list[list[float]] = [[] for _ in range(K)]
        self.logs = []
        for c in configs:
            log = {"step": [], "train_loss": [], "val_accuracy": [], "test_accuracy": [], "probes": {p: [] for p in c.probes}}
            if c.measures:
                log["measures"] = {m: {"step": [], "value": []} for m in c.measures}
            self.logs.append(log)

    # --- one member as a plain model, for probes, measures and the diverged ----------------------------------

    def plain(self, k: int) -> nn.Module:
        return stacked.load_member(self.net, k, self.K, self.members[k])

    def plain_optimizer(self, k: int, model: nn.Module) -> torch.optim.Optimizer:
        """Member k's optimizer over ``model`` (its plain copy), in the state of the stacked one."""
        if k not in self.plain_optimizers:
            params = [p for p in model.parameters() if p.requires_grad]
            self.plain_optimizers[k] = OPTIMIZERS[self.configs[k].optimizer](params, self.configs[k])
        opt = self.plain_optimizers[k]
        opt.state.clear()
        mine = [p for g in self.optimizer.param_groups for p in g["params"]]
        theirs = [p for g in opt.param_groups for p in g["params"]]
        for s, p in zip(mine, theirs):
            if s in self.optimizer.state:
                opt.state[p] = {
                    name: stacked.member(v, k, self.K, p).clone() if torch.is_tensor(v) and v.dim() and v.numel() == self.K * p.numel()
                    else (v.clone() if torch.is_tensor(v) else v)
                    for name, v in self.optimizer.state[s].items()
                }
        return opt

    def measure(self, step: int, k: int, idx: torch.Tensor, x_batch: torch.Tensor, at: str) -> None:
        """Member k's measurements due ``at`` ("logs" or "end"), after ``step`` updates, on its
        batch ``idx`` (its samples as trained on: ``x_batch``, ``(N, C, *positions)``)."""
        c = self.configs[k]
        due = [name for name in c.measures if MEASURES[name].at in (at, "all")]
        if not due:
            return
        model = self.plain(k)
        opt = self.plain_optimizer(k, model)
        with self.random_stream(k):
            seen = TrainingStep(step, model, opt, x_batch, self.y_train[idx], c, self.ds)
            for name in due:
                with _undone(model, opt):
                    value = MEASURES[name].fn(seen)
                self.logs[k]["measures"][name]["step"].append(step)
                self.logs[k]["measures"][name]["value"].append(value)

    @contextlib.contextmanager
    def random_stream(self, k: int):
        """The global RNG (of the group's device) at member k's stream, as a separate run's probes and
        measures see it; then as it was."""
        cuda = self.device.type == "cuda"
        get, put = (torch.cuda.get_rng_state, torch.cuda.set_rng_state) if cuda else (torch.get_rng_state, torch.set_rng_state)
        rng = get(self.device) if cuda else get()
        put(self.generators[k].get_state(), self.device) if cuda else put(self.generators[k].get_state())
        try:
            yield
        finally:
            put(rng, self.device) if cuda else put(rng)

    def record(self, step: int) -> None:
        val = _accuracies(self.net, self.K, self.ds.x_val, self.ds.y_val)
        test = _accuracies(self.net, self.K, self.ds.x_test, self.ds.y_test)
        for k in self.living():
            c, log, losses = self.configs[k], self.logs[k], self.losses[k]
            log["step"].append(step)
            log["train_loss"].append(sum(losses) / len(losses) if losses else None)
            log["val_accuracy"].append(val[k])
            log["test_accuracy"].append(test[k])
            if c.probes:
                model = self.plain(k)
                with self.random_stream(k):
                    for name in c.probes:
                        log["probes"][name].append(PROBES[name](model, c.model, self.ds.x_test[: c.probe_size]))
            self.losses[k] = []

    def living(self) -> list[int]:
        return [k for k in range(self.K) if self.alive[k]]

    # --- divergence ------------------------------------------------------------------------------------------

    def diverge(self, k: int, step: int, loss: float) -> None:
        """Member k diverged in the forward pass of ``step``: record why, and keep what is left of it,
        its weights before this step (its running statistics are mended by :meth:`bury`)."""
        reason = f"the training loss is {loss}"
        for name, buffers in self.norms:
            if not self.statistics_finite(k, buffers):
                layer = label(name, dict(self.members[k].named_modules())[name])
                reason = f"{layer}: the batch statistics are not finite; the running statistics were left as they were"
                break
        self.diverged[k] = {"step": step, "reason": reason}
        self.alive[k] = False
        self.living_index = torch.tensor(self.living(), dtype=torch.long, device=self.device)
        self.final_model[k] = self.plain(k)

    def bury(self, k: int, saved: torch.Tensor | None) -> None:
        """After the step that left the diverged member k out of the loss: the batch norm that
        refused non-finite statistics, and those after it (which a separate run never reached),
        keep those from before the step (``saved``, every running statistic end to end); then
        k's weights and optimizer state are zeroed, so that it trains nothing and stays finite."""
        broken, offset = False, 0
        with torch.no_grad():
            for _, buffers in self.norms:
                broken = broken or not self.statistics_finite(k, buffers)
                for b in buffers:
                    if broken:
                        b.view(self.K, -1)[k] = saved[offset : offset + b.numel()].view(self.K, -1)[k]
                    offset += b.numel()
            if broken:
                stacked.load_member(self.net, k, self.K, self.final_model[k], buffers_only=True)
            for p in self.net.parameters():
                p.view(self.K, -1)[k] = 0
            for state in self.optimizer.state.values():
                for v in state.values():
                    if torch.is_tensor(v) and v.dim():
                        v.view(self.K, -1)[k] = 0

    def statistics_finite(self, k: int, buffers: list[torch.Tensor] | None = None) -> bool:
        """Whether member k's running statistics (of ``buffers``, default all) are finite."""
        return all(bool(torch.isfinite(b.view(self.K, -1)[k]).all()) for b in (self.statistics if buffers is None else buffers))

    def objectives(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's training objective, ``(K,)``: :func:`~normlab.lab.models.loss` of its
        ``(classes, N)`` outputs plus :func:`~normlab.lab.models.penalty` of its kernels."""
        K, classes, N = outputs.shape
        if classes == 1:  # a sigmoid head: the logit of class 1, binary cross-entropy
            # member by member: its log and exp, over K * N values at once, would round a member's
            # values differently where they fell in the kernel's scalar tail (stacked.padded)
            target = y.to(outputs.dtype)
            per_sample = torch.stack([F.binary_cross_entropy_with_logits(outputs[k, 0], target[k], reduction="none") for k in range(K)])
        else:
            flat = outputs.transpose(1, 2).reshape(K * N, classes)
            per_sample = F.cross_entropy(flat, y.reshape(K * N), reduction="none").view(K, N)
        losses = per_sample.mean(1)
        l2 = self.configs[0].model.kernel_l2
        if l2:  # every hidden kernel, the classifier's left free (models.penalty)
            losses = losses + l2 * sum(w.reshape(K, -1).square().sum(1) for w in self.kernels)
        return losses

    # --- the loop --------------------------------------------------------------------------------------------

    def batch(self, k: int, idx: torch.Tensor) -> torch.Tensor:
        """Member k's training samples ``idx``, augmented with its own stream where the run augments."""
        x = self.x_train[idx]
        return x if self.augment is None else self.augment(x, self.augment_generators[k])

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The stacked samples ``(K, C, N, *positions)`` of every member's mini-batch ``idx[k]``."""
        x = self.x_train[idx] if self.augment is None else torch.stack([self.batch(k, i) for k, i in enumerate(idx)])
        return x.transpose(1, 2).contiguous()

    def indices(self, steps: int) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """The next ``steps`` mini-batches of every member: on the host (per step, per member), and
        as one ``(steps, K, N)`` tensor on the device, sent in one copy."""
        host = [[next(b) for b in self.batches] for _ in range(steps)]
        stacked_ = torch.stack([torch.stack(idx) for idx in host])
        if self.device.type == "cuda":
            stacked_ = stacked_.pin_memory()
        return host, stacked_.to(self.device, non_blocking=True)

    def snapshot(self) -> dict:
        """What a replay of the coming interval starts from: parameters, buffers, optimizer, random streams."""
        return {
            "net": copy.deepcopy(self.net.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generators": [g.get_state() for g in self.generators],
            "augment": [g.get_state() for g in self.augment_generators],
        }

    def restore(self, saved: dict) -> None:
        self.net.load_state_dict(saved["net"])
        self.optimizer.load_state_dict(saved["optimizer"])
        for g, state in zip(self.generators, saved["generators"]):
            g.set_state(state)
        for g, state in zip(self.augment_generators, saved["augment"]):
            g.set_state(state)

    def losses_of(self, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Each member's training objective on its mini-batch ``idx[k]`` (a ``(K,)`` tensor, on the device);
        ``x``: those samples as :meth:`inputs` gives them, where already made."""
        return self.objectives(self.net(self.inputs(idx) if x is None else x), self.y_train[idx])

    def update(self, losses: torch.Tensor) -> None:
        """One optimizer step on the living members' summed losses."""
        total = losses.sum() if all(self.alive) else losses[self.living_index].sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()

    def interval(self, a: int, b: int) -> bool:
        """Steps ``a + 1 .. b`` (a log interval), queued without waiting for the device: each
        member's losses, and whether a living member's loss or statistics went non-finite, are
        read once at the end. If one did, the interval is replayed from its start by
        :meth:`checked`. Returns whether any member is still alive."""
        host, idx = self.indices(b - a)
        first = self.configs[0]
        saved = self.snapshot()
        x = self.inputs(idx[0])  # the first batch: measured at the log as it is trained on (augmented alike)
        if first.measures and a % first.eval_every == 0:
            for k in self.living():
                self.measure(a, k, host[0][k], x[k].transpose(0, 1), "logs")
        bad = torch.zeros(self.K, dtype=torch.bool, device=self.device)
        window = []
        for i in range(b - a):
            losses = self.losses_of(idx[i], x if i == 0 else None)
            bad |= ~torch.isfinite(losses)
            if self.statistics:
                bad |= ~torch.stack([torch.isfinite(s.view(self.K, -1)).all(1) for s in self.statistics]).all(0)
            self.update(losses)
            window.append(losses.detach())
        alive = torch.tensor(self.alive, device=self.device)
        read = torch.cat([(bad & alive).to(torch.float32).unsqueeze(0), torch.stack(window)]).tolist()  # the one wait
        if any(read[0]):
            self.restore(saved)
            return self.checked(a, idx)
        for values in read[1:]:
            for k in self.living():
                self.losses[k].append(values[k])
        return True

    def checked(self, a: int, idx: torch.Tensor) -> bool:
        """The interval after step ``a`` again, each step's losses and statistics read at once: a member
        whose loss or running statistics turn non-finite ends there (:meth:`diverge`, :meth:`bury`)."""
        for i in range(len(idx)):
            step = a + 1 + i
            saved = torch.cat([b.view(-1) for b in self.statistics]) if self.statistics else None
            losses = self.losses_of(idx[i])
            values = losses.tolist()
            # a batch norm refuses non-finite running statistics even when the loss is still finite
            broken = saved is not None and not bool(torch.isfinite(torch.cat([b.view(-1) for b in self.statistics])).all())
            ended = [k for k in self.living() if not math.isfinite(values[k]) or (broken and not self.statistics_finite(k))]
            for k in ended:
                self.diverge(k, step, values[k])
            if not self.living():
                for k in ended:
                    self.bury(k, saved)
                return False
            self.update(losses)
            for k in ended:
                self.bury(k, saved)
            for k in self.living():
                self.losses[k].append(values[k])
        return True

    def run(self, start: float) -> list[dict]:
        first, K = self.configs[0], self.K
        self.record(0)
        self.net.train()
        a = 0
        while a < first.steps:
            b = min(first.steps, a - a % first.eval_every + first.eval_every)  # the next log
            if not self.interval(a, b):
                break
            self.record(b)
            a = b
        final_train = _accuracies(self.net, K, self.x_train, self.y_train)
        results = []
        seconds = round((time.perf_counter() - start) / K, 3)
        for k, c in enumerate(self.configs):
            log = self.logs[k]
            if self.diverged[k]:  # a diverged run is judged by what is left of the model, not by its last log
                model = self.final_model[k]
                final, final_tr = accuracy(model, self.ds.x_test, self.ds.y_test), accuracy(model, self.x_train, self.y_train)
                final_val = accuracy(model, self.ds.x_val, self.ds.y_val)
            else:
                if c.measures:
                    idx = next(self.batches[k])
                    self.measure(c.steps, k, idx, self.batch(k, idx), "end")
                final, final_tr, final_val = log["test_accuracy"][-1], final_train[k], log["val_accuracy"][-1]
            results.append({
                **log,
                "final_val_accuracy": final_val,
                "final_test_accuracy": final,
                "final_train_accuracy": final_tr,
                "classes": self.ds.classes,
                "val_samples": len(self.ds.x_val),
                "test_samples": len(self.ds.x_test),
                "diverged": self.diverged[k],
                "seconds": seconds,
                "group_size": K,
            })
        return results
