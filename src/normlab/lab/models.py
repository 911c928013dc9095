"""The lab's models, built from a small spec instead of a class per combination.

``build(ModelSpec(...), sample_shape, classes)`` returns an ``nn.Sequential`` (an
:class:`RNN` for ``kind="rnn"``):

* ``kind="mlp"``: ``depth`` hidden layers of ``width`` units, each
  ``Linear -> [norm] -> activation`` (or ``Linear -> activation -> norm`` with
  ``placement="after"``), followed by dropout when ``dropout > 0``, then a linear
  classifier. Ioffe & Szegedy's MNIST network (Fig. 1) is
  ``ModelSpec("mlp", 3, 100, "sigmoid")``.
* ``kind="cnn"``: the seed article's network (seed 004): ``depth`` blocks of two
  3-wide convolutions (``width`` channels; ``final_width`` in the last block), each
  followed by [norm] and the activation; every block but the last ends with 2-wide
  max-pooling and dropout; then a linear classifier. Convolutions are 1-D for
  MNIST-1D (samples ``(C, L)``) and 2-D for images (``(C, H, W)``): the data decides.
* ``kind="rnn"``: a recurrent network reading ``(C, L)`` samples as ``L`` time steps of
  ``C`` values (:class:`RNN`): ``depth`` stacked GRU layers of ``width`` units,
  the normalization on the recurrent pre-activations ``U h_{t-1}``, and a linear
  classifier on the last ``h``.
  Besides the norms of :data:`NORMS` (applied at every step: batch norm's statistics
  are then shared over time), ``norm="bn_step"`` keeps statistics per time step
  (:class:`TimeStepBatchNorm`).

``noise=True`` adds :class:`ShiftingNoise` after each hidden layer's normalization (or
after its linear map without one): Santurkar et al.'s "noisy" batch norm.

Normalizations are looked up by name in :data:`NORMS`, one table: adding a layer of
``normlab.nn`` to the lab is one line there (``bn``, ``gn``, ``ln``, ``renorm``,
``ghost``; the constants above the table fix their options). A linear or convolution
followed directly by a normalization has no bias: the normalization's shift replaces it.
``init_scale`` multiplies the default initial weights of every linear and convolution
layer (the classifier too), for sweeps over the initialization.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields, is_dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import normlab.nn as nlnn
from normlab.nn._base import NormBase

__all__ = [
    "ModelSpec", "NORMS", "TIME_NORMS", "ACTIVATIONS", "WEIGHTED", "build", "macs",
    "RNN", "TimeStepBatchNorm", "ShiftingNoise", "as_dict",
]


def _bn(channels: int, spatial_dims: int) -> nn.Module:
    return (nlnn.BatchNorm1d, nlnn.BatchNorm1d, nlnn.BatchNorm2d, nlnn.BatchNorm3d)[spatial_dims](channels)


_RENORM = (nlnn.BatchRenorm1d, nlnn.BatchRenorm1d, nlnn.BatchRenorm2d, nlnn.BatchRenorm3d)
# The lab's schedule for batch renormalization, in training steps: the paper's (5k steps of
# batch norm, dmax 0 -> 5 by 25k, rmax 1 -> 3 by 40k) scaled by 1/50 for runs of hundreds
# to a few thousand steps (see docs/claims.md, small-batches).
RENORM_SCHEDULE = {"warmup_steps": 100, "dmax_full_at": 500, "rmax_full_at": 800}
GHOST_BATCH = 16  # "ghost": the virtual batch size of ghost batch norm
GN_GROUPS = 4  # "gn": channel groups (Wu & He use 32 for ResNet's 64-2048 channels)

# name -> factory(channels, spatial dims of the activations: 0 for an MLP) -> module, or None
NORMS = {
    "none": None,
    "bn": _bn,
    "gn": lambda c, s: nlnn.GroupNorm(GN_GROUPS, c),
    # layer norm over the features of an MLP layer; in a CNN over (C, *spatial), per-channel affine
    # (Wu & He's LN: group norm with one group)
    "ln": lambda c, s: nlnn.LayerNorm(c) if s == 0 else nlnn.GroupNorm(1, c),
    "renorm": lambda c, s: _RENORM[s](c, **RENORM_SCHEDULE),
    "ghost": lambda c, s: nlnn.GhostBatchNorm(c, virtual_batch_size=GHOST_BATCH),
}

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}

# the layers with weights (the "layers" of per-layer measurements; what trainable="norm" leaves frozen)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ShiftingNoise(nn.Module):
    """Noise whose distribution changes at every step: Santurkar et al. 2018's "noisy BatchNorm".

    In training, every forward draws, per channel, the mean and spread of a multiplicative
    and of an additive noise (means ``U(0.75, 1.25)`` and ``U(-0.5, 0.5)``, standard
    deviations ``U(0, 0.25)`` each), then per activation ``y = x * scale + shift`` with
    ``scale`` and ``shift`` normal with those parameters. After a batch norm, which leaves
    each channel with mean 0 and variance 1 over the batch, the next layer's input thus
    moves in mean and scale from one step to the next: covariate shift put back on
    purpose. Over the draws ``E[scale] = 1`` and ``E[shift] = 0``, so at inference it is
    the identity.
    """

    SCALE_MEAN, SCALE_STD = (0.75, 1.25), (0.0, 0.25)
    SHIFT_MEAN, SHIFT_STD = (-0.5, 0.5), (0.0, 0.25)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (1, self.channels, *[1] * (x.dim() - 2))  # per channel, the same at every position

        def uniform(low_high):
            return x.new_empty(shape).uniform_(*low_high)

        scale = uniform(self.SCALE_MEAN) + uniform(self.SCALE_STD) * torch.randn_like(x)
        shift = uniform(self.SHIFT_MEAN) + uniform(self.SHIFT_STD) * torch.randn_like(x)
        return x * scale + shift

    def extra_repr(self) -> str:
        return str(self.channels)


class TimeStepBatchNorm(nn.Module):
    """Batch norm with statistics per time step and one scale and shift shared over time
    (Cooijmans et al. 2016, "Recurrent Batch Normalization").

    ``forward(x, t)`` normalizes the ``(N, C)`` input of step ``t`` with the batch
    statistics of that step in training, and with that step's running statistics at
    inference. Beyond the ``steps`` it was built for there are no statistics: at
    inference it uses the last step's, as Cooijmans et al. do for longer test
    sequences; in training it raises.
    """

    def __init__(self, channels: int, steps: int) -> None:
        super().__init__()
        self.statistics = nn.ModuleList(nlnn.BatchNorm1d(channels, affine=False) for _ in range(steps))
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        steps = len(self.statistics)
        if t >= steps:
            if self.training:
                raise ValueError(
                    f"TimeStepBatchNorm({self.weight.numel()}): has statistics for {steps} time steps, "
                    f"got step {t} in training; train on sequences of at most {steps} steps"
                )
            t = steps - 1
        return self.statistics[t](x) * self.weight + self.bias


# name -> factory(channels, time steps) -> module called as module(x, t): normalizations only an rnn has
TIME_NORMS = {"bn_step": TimeStepBatchNorm}


class RNN(nn.Module):
    """A GRU network over ``(N, C, L)`` inputs read as ``L`` steps of ``C`` values, with a
    normalization on the recurrent pre-activations.

    Each of ``spec.depth`` layers runs, from ``h_0 = 0`` (``x_t`` is the layer below's ``h_t``)::

        a = W x_t + b,   u = norm(U h_{t-1})          (3 x width values each: r, z, n)
        r = sigmoid(a_r + u_r),   z = sigmoid(a_z + u_z),   n = act(a_n + r * u_n)
        h_t = (1 - z) * n + z * h_{t-1}

    which is torch's GRU with ``norm`` in place of the recurrent bias. ``norm`` is one
    module of :data:`NORMS` used at every step, or a :data:`TIME_NORMS` one that knows
    the step (built for ``steps`` steps, the training length). The class scores are a
    linear map of the top layer's last ``h``. Inputs may be longer than ``steps``.
    """

    def __init__(self, spec: ModelSpec, channels: int, steps: int, classes: int) -> None:
        super().__init__()
        self.stepwise = spec.norm in TIME_NORMS
        shared = NORMS.get(spec.norm)
        gates = 3 * spec.width
        self.inputs, self.recurrent, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for layer in range(spec.depth):
            normalized = self.stepwise or shared is not None
            self.inputs.append(nn.Linear(channels if layer == 0 else spec.width, gates))
            self.recurrent.append(nn.Linear(spec.width, gates, bias=not normalized))
            if self.stepwise:
                self.norms.append(TIME_NORMS[spec.norm](gates, steps))
            elif normalized:
                self.norms.append(shared(gates, 0))
        self.act = ACTIVATIONS[spec.activation]()
        self.classifier = nn.Linear(spec.width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"RNN: expected an (N, C, L) input, got shape {tuple(x.shape)}")
        sequence = x.transpose(1, 2)  # (N, L, C): layer by layer, each over all steps
        for i, (inputs, recurrent) in enumerate(zip(self.inputs, self.recurrent)):
            a = inputs(sequence)  # W x_t + b for every step at once
            h = x.new_zeros(x.shape[0], recurrent.in_features)
            states = []
            for t in range(x.shape[2]):
                u = recurrent(h)
                if self.norms:
                    u = self.norms[i](u, t) if self.stepwise else self.norms[i](u)
                a_r, a_z, a_n = a[:, t].chunk(3, 1)
                u_r, u_z, u_n = u.chunk(3, 1)
                r, z = torch.sigmoid(a_r + u_r), torch.sigmoid(a_z + u_z)
                h = (1 - z) * self.act(a_n + r * u_n) + z * h
                states.append(h)
            if i < len(self.inputs) - 1:
                sequence = torch.stack(states, 1)
        return self.classifier(h)


def as_dict(config) -> dict:
    """A config dataclass as JSON has it (nested dicts, lists for tuples)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in fields(config)}


def _jsonable(v):
    return as_dict(v) if is_dataclass(v) else list(v) if isinstance(v, tuple) else v


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "mlp"  # "mlp", "cnn" or "rnn"
    depth: int = 3  # hidden layers (mlp), blocks (cnn) or stacked recurrent layers (rnn)
    width: int = 100  # units per hidden layer (mlp, rnn) or channels per block (cnn)
    activation: str = "sigmoid"  # a key of ACTIVATIONS (rnn: of the GRU's candidate state)
    norm: str = "none"  # a key of NORMS (rnn: or of TIME_NORMS)
    placement: str = "before"  # the normalization "before" or "after" the activation
    dropout: float = 0.0  # cnn: after each pooling; mlp: after each hidden layer
    final_width: int = 100  # cnn: channels of the last block
    init_scale: float = 1.0  # multiplies the default initial weights of the linear/conv layers
    noise: bool = False  # mlp, cnn: ShiftingNoise after each hidden layer's normalization
    norm_momentum: float | None = 0.1  # of every running statistic; None: cumulative average

    def __post_init__(self):
        norms = sorted(NORMS) + (sorted(TIME_NORMS) if self.kind == "rnn" else [])
        momentum_ok = self.norm_momentum is None or 0 <= self.norm_momentum <= 1
        checks = [
            (self.kind in ("mlp", "cnn", "rnn"), f"kind must be 'mlp', 'cnn' or 'rnn', got {self.kind!r}"),
            (self.depth >= 1 and self.width >= 1, f"depth and width must be positive, got {self.depth}, {self.width}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"),
            (self.norm in norms, f"norm must be one of {norms} for kind {self.kind!r}, got {self.norm!r}"),
            (momentum_ok, f"norm_momentum must lie in [0, 1] or be None, got {self.norm_momentum}"),
            (not (self.noise and self.kind == "rnn"), "noise is for kind 'mlp' or 'cnn', not 'rnn'"),
            (self.placement in ("before", "after"), f"placement must be 'before' or 'after', got {self.placement!r}"),
            (0 <= self.dropout < 1, f"dropout must lie in [0, 1), got {self.dropout}"),
            (self.init_scale > 0, f"init_scale must be positive, got {self.init_scale}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ModelSpec: {message}")


def _layer(spec: ModelSpec, make_linear, channels: int, spatial_dims: int) -> list[nn.Module]:
    """linear/conv, then normalization and activation in the spec's order."""
    norm = NORMS[spec.norm]
    linear = make_linear(bias=norm is None or spec.placement == "after")
    act = ACTIVATIONS[spec.activation]()
    noise = [ShiftingNoise(channels)] if spec.noise else []
    if norm is None:
        return [linear, *noise, act]
    n = norm(channels, spatial_dims)
    return [linear, n, *noise, act] if spec.placement == "before" else [linear, act, n, *noise]


def build(spec: ModelSpec, sample_shape: tuple[int, ...], classes: int) -> nn.Module:
    """The network ``spec`` describes, for samples of shape ``(C, *spatial)`` and ``classes`` outputs."""
    model = _build(spec, sample_shape, classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WEIGHTED):
                m.weight.mul_(spec.init_scale)
            if isinstance(m, NormBase):
                m.momentum = spec.norm_momentum
    return model


def _build(spec: ModelSpec, sample_shape: tuple[int, ...], classes: int) -> nn.Module:
    if spec.kind == "rnn":
        if len(sample_shape) != 2:
            raise ValueError(f"ModelSpec: an rnn reads samples of shape (C, L) as L steps of C values, got {tuple(sample_shape)}")
        return RNN(spec, *sample_shape, classes)
    if spec.kind == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(sample_shape)
        for _ in range(spec.depth):
            layers += _layer(spec, lambda bias, i=features: nn.Linear(i, spec.width, bias=bias), spec.width, 0)
            layers += [nn.Dropout(spec.dropout)] if spec.dropout > 0 else []
            features = spec.width
        return nn.Sequential(*layers, nn.Linear(features, classes))

    spatial = list(sample_shape[1:])
    if len(spatial) not in (1, 2):
        raise ValueError(f"ModelSpec: a cnn needs samples of shape (C, L) or (C, H, W), got {tuple(sample_shape)}")
    conv = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    pool = nn.MaxPool1d if len(spatial) == 1 else nn.MaxPool2d
    layers, channels = [], sample_shape[0]
    for block in range(spec.depth):
        last = block == spec.depth - 1
        out = spec.final_width if last else spec.width
        for _ in range(2):
            make = lambda bias, i=channels: conv(i, out, 3, padding=1, bias=bias)  # noqa: E731
            layers += _layer(spec, make, out, len(spatial))
            channels = out
        if not last:
            if min(spatial) < 2:
                raise ValueError(f"ModelSpec: {spec.depth} blocks pool samples of shape {tuple(sample_shape)} to nothing")
            layers += [pool(2), nn.Dropout(spec.dropout)]
            spatial = [s // 2 for s in spatial]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * math.prod(spatial), classes))


def macs(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample's forward pass through the linear and convolution layers."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        total += output[0].numel() * module.weight[0].numel()

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def torch_calls(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Torch functions and tensor methods one training-mode forward pass calls.

    Each costs Python and dispatch time whatever the batch size: for small models at small
    batches (a GRU's steps, batches of 2) that, not the multiply-adds, is most of a run's
    time. The pass runs on a copy of ``model`` (it updates batch-norm statistics), on a
    batch of 2 random samples.
    """
    probe, x = copy.deepcopy(model).train(), torch.randn(2, *sample_shape)
    counter = _CountCalls()
    with torch.no_grad(), counter:
        probe(x)
    return counter.calls
