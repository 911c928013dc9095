"""The lab's models, built from a small spec instead of a class per network.

``build(ModelSpec(...), sample_shape, classes)`` returns an ``nn.Sequential`` (an
:class:`RNN` for ``kind="rnn"``):

* ``kind="mlp"``: ``depth`` hidden layers of ``width`` units (or one width per layer),
  each ``Linear -> [norm] -> activation`` (or ``Linear -> activation -> norm`` with
  ``placement="after"``), followed by dropout where its rate is above 0, then a linear
  classifier. Ioffe & Szegedy's MNIST network (Fig. 1) is
  ``ModelSpec("mlp", 3, 100, "sigmoid")``.
* ``kind="cnn"``: ``depth`` blocks of ``convs`` 3-wide convolutions (2 by default) of
  ``width`` channels (``final_width`` in the last block; or one width per block), each
  followed by [norm] and the activation; every block but the last (every block with
  ``pool_last``) ends with 2-wide max-pooling and dropout; then ``dense`` hidden linear
  layers (none by default) and a linear classifier. Convolutions are 1-D for MNIST-1D
  (samples ``(C, L)``) and 2-D for images (``(C, H, W)``): the data decides.
  ``ModelSpec("cnn", 5, 60, final_width=100, dropout=0.15)`` is the Keras CNN of the
  blog post reviewing Ioffe and Szegedy; ``width=(64, 128, 256, 512, 512),
  convs=(1, 1, 2, 2, 2), pool_last=True`` gives VGG-11 (Simonyan & Zisserman's
  configuration A), the VGG of CIFAR experiments such as Santurkar et al.'s.
* ``kind="rnn"``: a recurrent network reading ``(C, L)`` samples as ``L`` time steps of
  ``C`` values (:class:`RNN`): ``depth`` stacked GRU layers of ``width`` units,
  the normalization on the recurrent pre-activations ``U h_{t-1}``, and a linear
  classifier on the last ``h``.
  Besides the norms of :data:`NORMS` (applied at every step: batch norm's statistics
  are then shared over time), ``norm="bn_step"`` keeps statistics per time step
  (:class:`TimeStepBatchNorm`).

The classifier (``head``) has one output per class, trained with cross-entropy, or, with
``head="sigmoid"`` for two classes, one output, the logit of class 1, trained with binary
cross-entropy (Keras's ``Dense(1, activation="sigmoid")`` with ``binary_crossentropy``):
:func:`loss` and :func:`predict` read either from the outputs' width. ``kernel_l2`` adds
Keras's ``kernel_regularizer=l2(v)`` of every hidden layer to the loss (:func:`penalty`).

``noise=True`` adds :class:`ShiftingNoise` after each hidden layer's normalization (or
after its linear map without one): Santurkar et al.'s "noisy" batch norm.

Normalizations are looked up by name in :data:`NORMS`, one table: adding a layer of
``normlab.nn`` to the lab is one line there (``bn``, ``gn``, ``ln``, ``renorm``,
``ghost``; the constants above the table fix their options). A linear or convolution
followed directly by a normalization has no bias (the normalization's shift replaces
it) unless ``bias_before_norm``. ``init`` names how every linear and convolution layer's
weights are drawn (the classifier's too), one of :data:`INITS`: as torch initializes
them, or by LeCun's, Glorot's (Keras's) or He's scheme with zero biases; ``init_scale``
then multiplies them, for sweeps over their scale. ``ModelSpec(..., **KERAS)`` builds a network as Keras would,
with Keras's initialization and batch-norm defaults.

``spec.misfit(sample_shape, classes)`` says why a network cannot be built for some data
(an rnn on images, more poolings than the image has pixels, a sigmoid head for ten
classes), before anything is built: ``normlab reproduce`` skips the claims whose
networks do not fit the data.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import normlab.nn as nlnn
from torch.nn.modules.batchnorm import _NormBase as NormBase  # batch and instance norms: they have a momentum

__all__ = [
    "ModelSpec", "NORMS", "TIME_NORMS", "ACTIVATIONS", "INITS", "HEADS", "WEIGHTED", "KERAS", "build", "macs",
    "loss", "predict", "penalty", "RNN", "TimeStepBatchNorm", "ShiftingNoise", "as_dict", "later",
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

# The initialization schemes: name -> what draws a layer's weight (its bias then starts at 0), or None for
# torch's default (weight and bias uniform in +-1/sqrt(fan_in): kaiming_uniform_ with a = sqrt(5)).
# fan_in and fan_out are torch's: in and out features, times the kernel size for a convolution.
INITS = {
    "torch": None,
    "lecun": lambda w: nn.init.kaiming_normal_(w, nonlinearity="linear"),  # N(0, 1/fan_in): LeCun et al. 1998
    "glorot": nn.init.xavier_uniform_,  # U(+-sqrt(6/(fan_in + fan_out))): Glorot & Bengio 2010
    "he": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),  # N(0, 2/fan_in): He et al. 2015
}

# the layers with weights (the "layers" of per-layer measurements; what trainable="norm" leaves frozen)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Head(NamedTuple):
    outputs: Callable[[int], int]  # classes -> outputs of the classifier
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs (N, k), labels (N,)) -> mean loss
    predict: Callable[[torch.Tensor], torch.Tensor]  # outputs (N, k) -> predicted classes (N,)


# name -> the classifier's outputs, its loss, its prediction (the Keras equivalents in the comments)
HEADS = {
    # Dense(classes, activation="softmax"), categorical_crossentropy
    "softmax": Head(lambda classes: classes, F.cross_entropy, lambda s: s.argmax(1)),
    # Dense(1, activation="sigmoid"), binary_crossentropy: the output is the logit of class 1
    "sigmoid": Head(
        lambda classes: 1,
        lambda s, y: F.binary_cross_entropy_with_logits(s[:, 0], y.to(s.dtype)),
        lambda s: (s[:, 0] > 0).long(),
    ),
}


def _head(outputs: torch.Tensor) -> Head:
    return HEADS["sigmoid" if outputs.shape[1] == 1 else "softmax"]


def loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The classifier's loss: cross-entropy of the class scores or, for a single output
    (``head="sigmoid"``), binary cross-entropy of the logit of class 1."""
    return _head(outputs).loss(outputs, y)


def predict(outputs: torch.Tensor) -> torch.Tensor:
    """The predicted classes: the highest score, or, for a single output, 1 where its logit is positive."""
    return _head(outputs).predict(outputs)


def penalty(model: nn.Module, spec: ModelSpec) -> torch.Tensor | float:
    """``spec.kernel_l2`` times the sum of squares of every hidden layer's kernel (weight):
    Keras's ``kernel_regularizer=regularizers.l2(v)``, whose gradient is ``2 v w``. Biases,
    normalizations and the classifier (the last linear layer) are left free, as in the
    Keras models that use it."""
    if not spec.kernel_l2:
        return 0.0
    kernels = [m.weight for m in model.modules() if isinstance(m, WEIGHTED)][:-1]
    return spec.kernel_l2 * sum(w.square().sum() for w in kernels)


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

    def __init__(self, spec: ModelSpec, channels: int, steps: int, outputs: int) -> None:
        super().__init__()
        self.stepwise = spec.norm in TIME_NORMS
        shared = NORMS.get(spec.norm)
        gates = 3 * spec.width
        self.inputs, self.recurrent, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for layer in range(spec.depth):
            normalized = self.stepwise or shared is not None
            self.inputs.append(nn.Linear(channels if layer == 0 else spec.width, gates))
            self.recurrent.append(nn.Linear(spec.width, gates, bias=not normalized or spec.bias_before_norm))
            if self.stepwise:
                self.norms.append(TIME_NORMS[spec.norm](gates, steps))
            elif normalized:
                self.norms.append(shared(gates, 0))
        self.act = ACTIVATIONS[spec.activation]()
        self.classifier = nn.Linear(spec.width, outputs)

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


def later(default):
    """A config field added after runs were cached: :func:`as_dict` (and so the cache key)
    leaves it out while it holds its default, so every config that existed before it keeps
    its key and its cached result."""
    return field(default=default, metadata={"later": True})


def as_dict(config) -> dict:
    """A config dataclass as JSON has it (nested dicts, lists for tuples), without the
    :func:`later` fields left at their defaults."""
    out = {}
    for f in fields(config):
        v = getattr(config, f.name)
        if not (f.metadata.get("later") and v == f.default):
            out[f.name] = _jsonable(v)
    return out


def _jsonable(v):
    return as_dict(v) if is_dataclass(v) else list(v) if isinstance(v, tuple) else v


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "mlp"  # "mlp", "cnn" or "rnn"
    depth: int = 3  # hidden layers (mlp), blocks (cnn) or stacked recurrent layers (rnn)
    width: int | tuple[int, ...] = 100  # units per hidden layer (mlp, rnn) or channels per block (cnn); or one each
    activation: str = "sigmoid"  # a key of ACTIVATIONS (rnn: of the GRU's candidate state)
    norm: str = "none"  # a key of NORMS (rnn: or of TIME_NORMS)
    placement: str = "before"  # the normalization "before" or "after" the activation
    dropout: float | tuple[float, ...] = 0.0  # mlp: after each hidden layer; cnn: after each pooling; or one rate each
    final_width: int = 100  # cnn with one width: channels of the last block
    init_scale: float = 1.0  # multiplies the initial weights of the linear/conv layers
    noise: bool = False  # mlp, cnn: ShiftingNoise after each hidden layer's normalization
    norm_momentum: float | None = 0.1  # of every running statistic; None: cumulative average
    # fields added later (see `later`): what the source experiments need
    convs: int | tuple[int, ...] = later(2)  # cnn: convolutions per block, or one count per block
    pool_last: bool = later(False)  # cnn: max-pooling and dropout after the last block too (VGG)
    dense: tuple[int, ...] = later(())  # cnn: widths of hidden linear layers before the classifier
    head: str = later("softmax")  # a key of HEADS: "sigmoid" is one output for two classes
    kernel_l2: float = later(0.0)  # v of Keras's l2(v) on every hidden layer's kernel (see penalty)
    init: str = later("torch")  # a key of INITS: "torch" (torch's own), "lecun", "glorot" (Keras's) or "he"
    norm_eps: float | None = later(None)  # eps of every normalization; None: each layer's default (1e-5)
    bias_before_norm: bool = later(False)  # keep the bias of a map a normalization follows (Keras's layers do)

    def __post_init__(self):
        for name in ("width", "dropout", "convs", "dense"):  # lists (from JSON) as tuples: a spec is hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        norms = sorted(NORMS) + (sorted(TIME_NORMS) if self.kind == "rnn" else [])
        momentum_ok = self.norm_momentum is None or 0 <= self.norm_momentum <= 1
        eps_ok = self.norm_eps is None or (math.isfinite(self.norm_eps) and self.norm_eps > 0)
        cnn_only = (self.convs, self.pool_last, self.dense) != (2, False, ())
        checks = [
            (self.kind in ("mlp", "cnn", "rnn"), f"kind must be 'mlp', 'cnn' or 'rnn', got {self.kind!r}"),
            (self.depth >= 1, f"depth must be positive, got {self.depth}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"),
            (self.norm in norms, f"norm must be one of {norms} for kind {self.kind!r}, got {self.norm!r}"),
            (momentum_ok, f"norm_momentum must lie in [0, 1] or be None, got {self.norm_momentum}"),
            (eps_ok, f"norm_eps must be positive and finite or None, got {self.norm_eps}"),
            (not (self.noise and self.kind == "rnn"), "noise is for kind 'mlp' or 'cnn', not 'rnn'"),
            (self.placement in ("before", "after"), f"placement must be 'before' or 'after', got {self.placement!r}"),
            (self.init_scale > 0, f"init_scale must be positive, got {self.init_scale}"),
            (self.init in INITS, f"init must be one of {sorted(INITS)}, got {self.init!r}"),
            (self.head in HEADS, f"head must be one of {sorted(HEADS)}, got {self.head!r}"),
            (math.isfinite(self.kernel_l2) and self.kernel_l2 >= 0, f"kernel_l2 must be non-negative, got {self.kernel_l2}"),
            (self.kind == "cnn" or not cnn_only, "convs, pool_last and dense are for kind 'cnn'"),
            (self.kind != "rnn" or not isinstance(self.width, tuple), "an rnn has one width for all its layers"),
            (not isinstance(self.width, tuple) or self.final_width == 100,
             "with one width per block, the last one is the tuple's (leave final_width)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ModelSpec: {message}")
        pools = self.depth - 1 + self.pool_last
        self._per("width", self.widths, self.depth, lambda w: isinstance(w, int) and w >= 1, "positive integers")
        self._per("convs", self.convs_per_block, self.depth, lambda n: isinstance(n, int) and n >= 1, "positive integers")
        layers = self.depth if self.kind == "mlp" else pools if self.kind == "cnn" else None
        self._per("dropout", self.dropouts, layers, lambda p: 0 <= p < 1, "rates in [0, 1)")
        self._per("dense", self.dense, None, lambda w: isinstance(w, int) and w >= 1, "positive integers")

    def _per(self, name: str, values: tuple, count: int | None, ok, what: str) -> None:
        given = getattr(self, name)
        if isinstance(given, tuple) and count is not None and len(given) != count:
            unit = "layer" if self.kind == "mlp" else "pooling" if name == "dropout" else "block"
            raise ValueError(f"ModelSpec: {name} has {len(given)} values for {count} {unit}s, got {given}")
        if not all(ok(v) for v in values):
            raise ValueError(f"ModelSpec: {name} must hold {what}, got {given}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Units of each hidden layer (mlp, rnn) or channels of each block (cnn)."""
        if isinstance(self.width, tuple):
            return self.width
        if self.kind == "cnn":
            return (self.width,) * (self.depth - 1) + (self.final_width,)
        return (self.width,) * self.depth

    @property
    def dropouts(self) -> tuple[float, ...]:
        """The dropout rate after each hidden layer (mlp) or each pooling (cnn)."""
        if isinstance(self.dropout, tuple):
            return self.dropout
        return (self.dropout,) * (self.depth if self.kind != "cnn" else self.depth - 1 + self.pool_last)

    @property
    def convs_per_block(self) -> tuple[int, ...]:
        return self.convs if isinstance(self.convs, tuple) else (self.convs,) * self.depth

    def misfit(self, sample_shape: tuple[int, ...], classes: int) -> str | None:
        """Why this network cannot be built for samples of ``sample_shape`` and ``classes``
        classes (the message :func:`build` raises), or None when it can."""
        shape = tuple(sample_shape)
        if self.head == "sigmoid" and classes != 2:
            return f"ModelSpec: a sigmoid head classifies 2 classes, the data has {classes}"
        if self.kind == "rnn" and len(shape) != 2:
            return f"ModelSpec: an rnn reads samples of shape (C, L) as L steps of C values, got {shape}"
        if self.kind == "cnn":
            if len(shape) not in (2, 3):
                return f"ModelSpec: a cnn needs samples of shape (C, L) or (C, H, W), got {shape}"
            spatial, pools = list(shape[1:]), self.depth - 1 + self.pool_last
            for _ in range(pools):
                if min(spatial) < 2:
                    return f"ModelSpec: {self.depth} blocks ({pools} poolings) pool samples of shape {shape} to nothing"
                spatial = [s // 2 for s in spatial]
        return None


# Keras's defaults as ModelSpec fields: ModelSpec(..., **KERAS) is the network a Keras model of
# the same layers builds: Glorot-uniform kernels and zero biases, a bias in every Dense/Conv
# layer (use_bias=True) even before a BatchNormalization, whose momentum=0.99 (the weight of
# the old average, torch's 0.01) and epsilon=1e-3 it takes.
KERAS = {"init": "glorot", "norm_momentum": nlnn.from_keras_momentum(0.99), "norm_eps": 1e-3, "bias_before_norm": True}


def _layer(spec: ModelSpec, make_linear, channels: int, spatial_dims: int) -> list[nn.Module]:
    """linear/conv, then normalization and activation in the spec's order."""
    norm = NORMS[spec.norm]
    linear = make_linear(bias=norm is None or spec.placement == "after" or spec.bias_before_norm)
    act = ACTIVATIONS[spec.activation]()
    noise = [ShiftingNoise(channels)] if spec.noise else []
    if norm is None:
        return [linear, *noise, act]
    n = norm(channels, spatial_dims)
    return [linear, n, *noise, act] if spec.placement == "before" else [linear, act, n, *noise]


def build(spec: ModelSpec, sample_shape: tuple[int, ...], classes: int) -> nn.Module:
    """The network ``spec`` describes, for samples of shape ``(C, *spatial)`` and ``classes`` classes.

    Raises ``ValueError`` with :meth:`ModelSpec.misfit`'s reason when it cannot be built for them.
    """
    reason = spec.misfit(sample_shape, classes)
    if reason:
        raise ValueError(reason)
    model = _build(spec, tuple(sample_shape), HEADS[spec.head].outputs(classes))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WEIGHTED):
                if INITS[spec.init] is not None:
                    INITS[spec.init](m.weight)
                    if m.bias is not None:
                        m.bias.zero_()
                m.weight.mul_(spec.init_scale)
            if isinstance(m, NormBase):
                m.momentum = spec.norm_momentum
                if spec.norm_eps is not None:
                    m.eps = spec.norm_eps
            if hasattr(m, "non_finite"):
                # non-finite batch statistics end the run as diverged (train.py), rather than the layers'
                # default of skipping the update, which would let a run that blew up train on
                m.non_finite = "raise"
    return model


def _build(spec: ModelSpec, sample_shape: tuple[int, ...], outputs: int) -> nn.Module:
    if spec.kind == "rnn":
        return RNN(spec, *sample_shape, outputs)

    if spec.kind == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(sample_shape)
        for width, p in zip(spec.widths, spec.dropouts):
            layers += _layer(spec, lambda bias, i=features, o=width: nn.Linear(i, o, bias=bias), width, 0)
            layers += [nn.Dropout(p)] if p > 0 else []
            features = width
        return nn.Sequential(*layers, nn.Linear(features, outputs))

    spatial = list(sample_shape[1:])
    conv = nn.Conv1d if len(spatial) == 1 else nn.Conv2d
    pool = nn.MaxPool1d if len(spatial) == 1 else nn.MaxPool2d
    layers, channels, dropouts = [], sample_shape[0], iter(spec.dropouts)
    for block, (out, convs) in enumerate(zip(spec.widths, spec.convs_per_block)):
        for _ in range(convs):
            make = lambda bias, i=channels, o=out: conv(i, o, 3, padding=1, bias=bias)  # noqa: E731
            layers += _layer(spec, make, out, len(spatial))
            channels = out
        if block < spec.depth - 1 or spec.pool_last:
            layers += [pool(2), nn.Dropout(next(dropouts))]
            spatial = [s // 2 for s in spatial]
    layers.append(nn.Flatten())
    features = channels * math.prod(spatial)
    for width in spec.dense:
        layers += _layer(spec, lambda bias, i=features, o=width: nn.Linear(i, o, bias=bias), width, 0)
        features = width
    return nn.Sequential(*layers, nn.Linear(features, outputs))


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
