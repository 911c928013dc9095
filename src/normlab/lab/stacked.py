"""K runs of one architecture as one model: the layers of the lab's vectorized runner.

``stack(members)`` takes K models built by :func:`normlab.lab.models.build` from one
spec (each with its own seed, hence its own initialization) and returns one module
that trains all K at once, each *member* keeping its own parameters, normalization
statistics and random streams. Nothing mixes members: every operation below is
either elementwise or applied to each member's slice on its own.

Layout: every activation is ``(K, C, N, *spatial)``: member, channel, sample, then
the positions. Linear and convolution layers are one batched matrix product over the
members (``torch.baddbmm``; a convolution after gathering its taps, as im2col);
normalizations are the normlab layers themselves with ``K * C`` channels, fed a
view in which member k's channels are channels ``k*C .. k*C + C - 1`` (a batch norm
over ``K * C`` channels is K independent batch norms; a group norm over ``K * G``
groups, K independent group norms). Layer norm over the features becomes group norm
with one group per member.

*A member's numbers do not depend on the group it trains in.* That is what lets each
run be cached on its own. It holds because every kernel used here computes a member's
slice the same way wherever it sits: batched products and the per-channel reductions
of a batch norm over ``(1, K*C, N)`` (the layout whose reductions run over contiguous
rows) do; elementwise kernels do except in the scalar tail of their vector loop, where
transcendental functions (sigmoid, tanh) may round differently, so those run on
buffers padded to :data:`VECTOR` elements; batch norm over ``(N, K*C)`` does not (its
vector lanes run across channels) and is never used. ``tests/lab/test_group.py``
checks it for every kind of network, member by member, bit for bit.

Parameters and buffers are member-major: the part of a stacked tensor that is member
k's, in the member's own element order, is ``t.reshape(K, -1)[k]`` (:func:`member`);
a tensor a member holds once for all (``num_batches_tracked``) is shared.
:func:`load_member` copies member k back into a plain model of the spec, for probes,
measures and anything else that wants an ordinary ``nn.Module``.

Random modules (dropout, :class:`~normlab.lab.models.ShiftingNoise`) draw each
member's numbers from that member's ``torch.Generator`` (``model.generators``), the
same calls in the same order as a separate run draws from the global generator.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..tools._common import is_batchnorm
from . import models

__all__ = ["stack", "load_member", "member", "VECTOR", "NotStackable", "set_generators"]

VECTOR = 32  # elements; a multiple of every CPU's elementwise vector step (AVX-512: 2 x 16 floats)


class NotStackable(TypeError):
    """A module the vectorized runner has no stacked form for."""


def member(t: torch.Tensor, k: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """Member ``k``'s part of the stacked tensor ``t``, shaped as ``like`` (a view where possible)."""
    if t.numel() == like.numel():
        return t.view_as(like) if t.dim() else t
    return t.reshape(K, -1)[k].view_as(like)


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Member-major concatenation of the members' tensors (flattened per member)."""
    return torch.stack([t.detach().reshape(-1) for t in tensors]).contiguous()


class Stacked(nn.Module):
    """Base of the stacked layers: ``K`` members."""

    def __init__(self, K: int) -> None:
        super().__init__()
        self.K = K


class Linear(Stacked):
    """K linear layers: ``y[k] = W[k] @ x[k] + b[k]`` over the channel axis of ``(K, C, ...)``."""

    def __init__(self, members: list[nn.Linear]) -> None:
        super().__init__(len(members))
        first = members[0]
        self.weight = nn.Parameter(_stacked([m.weight for m in members]).view(self.K, first.out_features, first.in_features))
        has_bias = first.bias is not None
        self.bias = nn.Parameter(_stacked([m.bias for m in members]).view(self.K, -1, 1)) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rest = x.shape[2:]
        flat = x.reshape(self.K, x.shape[1], -1)
        return _product(self.weight, flat, self.bias).view(self.K, -1, *rest)


SMALL = 8  # a product with at most this many rows or inputs per member is computed elementwise


def _product(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``weight @ x + bias`` per member, ``weight`` of shape ``(K, out, in)`` and ``x`` of ``(K, in, M)``.

    Batched matrix products (MKL's) compute a member the same way wherever it sits in the
    batch, except with very few rows (their gradient too: few inputs), where they group
    members and round by position; those products are computed elementwise instead."""
    if min(weight.shape[1], weight.shape[2]) <= SMALL:
        y = (weight.unsqueeze(-1) * x.unsqueeze(1)).sum(2)
        return y if bias is None else y + bias
    return torch.bmm(weight, x) if bias is None else torch.baddbmm(bias, weight, x)


class Conv(Stacked):
    """K convolutions (stride 1, zero padding), as one product: the input's taps gathered
    into ``(K, C * taps, N * positions)`` (im2col), times ``(K, out, C * taps)``."""

    def __init__(self, members: list[nn.Conv1d | nn.Conv2d]) -> None:
        super().__init__(len(members))
        first = members[0]
        ok = (
            all(s == 1 for s in first.stride) and all(d == 1 for d in first.dilation) and first.groups == 1
            and first.padding_mode == "zeros" and not isinstance(first.padding, str)
        )
        if not ok:
            raise NotStackable(f"{first}: the vectorized runner stacks convolutions of stride 1, dilation 1, one group and zero padding")
        self.kernel, self.padding = tuple(first.kernel_size), tuple(first.padding)
        self.weight = nn.Parameter(_stacked([m.weight for m in members]).view(self.K, first.out_channels, -1))
        self.bias = nn.Parameter(_stacked([m.bias for m in members]).view(self.K, -1, 1)) if first.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C, N, *size = x.shape
        pad = [p for p in reversed(self.padding) for _ in (0, 1)]
        padded = F.pad(x, pad)
        out = [s + 2 * p - k + 1 for s, p, k in zip(size, self.padding, self.kernel)]
        taps = []
        for offset in _offsets(self.kernel):  # in the order of the weight's kernel axes (row-major)
            index = [slice(None)] * 3 + [slice(o, o + n) for o, n in zip(offset, out)]
            taps.append(padded[tuple(index)])
        cols = torch.stack(taps, 2).reshape(K, C * len(taps), -1)  # (K, C * taps, N * positions), channel-major
        return _product(self.weight, cols, self.bias).view(K, -1, N, *out)


def _offsets(kernel: tuple[int, ...]):
    if not kernel:
        yield ()
        return
    for i in range(kernel[0]):
        for rest in _offsets(kernel[1:]):
            yield (i, *rest)


def _widened(m: nn.Module, K: int, members: list[nn.Module], **attributes) -> nn.Module:
    """A copy of the normalization ``m`` for ``K`` members' channels: every parameter and
    buffer with channels becomes the member-major concatenation of the members' tensors."""
    out = copy.deepcopy(m)
    for name, value in attributes.items():
        setattr(out, name, value)
    for name, p in m.named_parameters(recurse=False):
        out._parameters[name] = nn.Parameter(_stacked([x._parameters[name] for x in members]).view(-1), p.requires_grad)
    for name, b in m.named_buffers(recurse=False):
        if b is not None and b.dim():
            out._buffers[name] = _stacked([x._buffers[name] for x in members]).view(-1)
    if hasattr(out, "non_finite"):
        # one member's non-finite statistics end that member, not the group: the loop checks each member's
        # (a plain run's layer raises there; the group's must neither raise nor recompute every member)
        out.non_finite = "propagate"
    return out


def _one_sample(x: torch.Tensor) -> torch.Tensor:
    """``(K, C, N, *positions)`` as one sample of ``K * C`` channels, ``(1, K*C, N * p_0, *p_1..)``:
    each channel's values in one contiguous row, in the rank the layer expects."""
    K, C = x.shape[:2]
    return x.reshape(1, K * C, -1, *x.shape[4:])


class ChannelNorm(Stacked):
    """A per-channel normalization (batch norm and its variants) over ``K * C`` channels, fed
    :func:`_one_sample`: each channel's statistics over its samples and positions."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__(len(members))
        self.norm = _widened(members[0], self.K, members, num_features=self.K * members[0].num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_one_sample(x)).view_as(x)


class GhostNorm(Stacked):
    """Ghost batch norm over ``K * C`` channels: virtual batch ``j`` of every member is
    sample ``j`` of a ``(V, K*C, virtual batch * positions)`` input to a ghost batch norm
    of virtual batch 1, so its running statistics see the virtual batches in order."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__(len(members))
        first = members[0]
        self.size = first.virtual_batch_size
        self.norm = _widened(first, self.K, members, num_features=self.K * first.num_features, virtual_batch_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C, N, *size = x.shape
        if not self.training or N <= self.size:
            return self.norm(_one_sample(x)).view_as(x)
        if N % self.size:
            raise NotStackable(f"ghost batch norm: a batch of {N} is not a whole number of virtual batches of {self.size}")
        v = N // self.size
        split = x.reshape(K, C, v, self.size, -1).permute(2, 0, 1, 3, 4).reshape(v, K * C, -1)
        y = self.norm(split)
        return y.view(v, K, C, self.size, -1).permute(1, 2, 0, 3, 4).reshape(x.shape)


class SampleNorm(Stacked):
    """A per-sample normalization (group norm; layer norm over the features) as a group
    norm of ``K * groups`` groups over ``(N, K*C, *positions)``."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__(len(members))
        first = members[0]
        if isinstance(first, nn.LayerNorm) or type(first).__name__ == "LayerNorm":
            if len(first.normalized_shape) != 1:
                raise NotStackable(f"{first}: the vectorized runner stacks layer norms over one axis")
            from ..nn import GroupNorm

            channels = first.normalized_shape[0]
            affine = first.weight is not None
            proto = GroupNorm(1, channels, eps=first.eps, affine=affine, bias=affine and first.bias is not None)
            proxies = []
            for m in members:
                p = copy.deepcopy(proto)
                with torch.no_grad():
                    for name in ("weight", "bias"):
                        if getattr(p, name) is not None:
                            getattr(p, name).copy_(getattr(m, name))
                proxies.append(p)
            members, first = proxies, proto
        self.norm = _widened(first, self.K, members, num_groups=self.K * first.num_groups, num_channels=self.K * first.num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C, N, *size = x.shape
        batch_first = x.transpose(1, 2).transpose(0, 1).reshape(N, K * C, *size)
        y = self.norm(batch_first)
        return y.view(N, K, C, *size).transpose(0, 1).transpose(1, 2).contiguous()


def _natural(shape_of: torch.Tensor) -> tuple[int, ...]:
    """A member's own shape ``(N, C, *positions)`` for a stacked activation ``(K, C, N, *positions)``."""
    _, C, N, *size = shape_of.shape
    return (N, C, *size)


def _to_stacked(per_member: list[torch.Tensor]) -> torch.Tensor:
    """Members' ``(N, C, *positions)`` tensors as one ``(K, C, N, *positions)``."""
    return torch.stack(per_member).transpose(1, 2)


class Dropout(Stacked):
    """Dropout with each member's own random stream: member k's mask is what ``F.dropout``
    would draw from generator k (``bernoulli_(1 - p)`` on the member's shape, divided by ``1 - p``)."""

    def __init__(self, members: list[nn.Dropout]) -> None:
        super().__init__(len(members))
        self.p = members[0].p
        self.generators: list[torch.Generator] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape, keep = _natural(x), 1 - self.p
        masks = [x.new_empty(shape).bernoulli_(keep, generator=g).div_(keep) for g in self.generators]
        return x * _to_stacked(masks)


class Noise(Stacked):
    """:class:`~normlab.lab.models.ShiftingNoise` with each member's own random stream, drawn
    as the layer draws them: per channel the two means and spreads, then per value."""

    def __init__(self, members: list[models.ShiftingNoise]) -> None:
        super().__init__(len(members))
        self.generators: list[torch.Generator] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        N, C, *size = _natural(x)
        channel_shape = (1, C, *[1] * len(size))
        S = models.ShiftingNoise
        scales, shifts = [], []
        for g in self.generators:

            def uniform(low_high, g=g):
                return x.new_empty(channel_shape).uniform_(*low_high, generator=g)

            def randn(g=g):
                return torch.randn((N, C, *size), generator=g, dtype=x.dtype, device=x.device)

            scales.append(uniform(S.SCALE_MEAN) + uniform(S.SCALE_STD) * randn())
            shifts.append(uniform(S.SHIFT_MEAN) + uniform(S.SHIFT_STD) * randn())
        return x * _to_stacked(scales) + _to_stacked(shifts)


def padded(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` computed on a buffer padded to a multiple of :data:`VECTOR` elements, so
    that no element falls in the scalar tail of an elementwise vector loop."""
    n = x.numel()
    if n % VECTOR == 0:
        return fn(x)
    flat = F.pad(x.reshape(-1), (0, VECTOR - n % VECTOR))
    return fn(flat)[:n].view(x.shape)


class Activation(Stacked):
    """An elementwise activation; a transcendental one (sigmoid, tanh) on a padded buffer."""

    EXACT = (nn.ReLU, nn.Identity)  # whose vector and scalar loops agree bit for bit

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__(len(members))
        self.act = copy.deepcopy(members[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) if isinstance(self.act, self.EXACT) else padded(self.act, x)


class Pool(Stacked):
    """Max pooling over the positions of every member's every channel and sample."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__(len(members))
        self.pool = copy.deepcopy(members[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C, N, *size = x.shape
        y = self.pool(x.reshape(K * C, N, *size))
        return y.view(K, C, N, *y.shape[2:])


class Flatten(Stacked):
    """``(K, C, N, *positions)`` to ``(K, C * positions, N)``: each sample's features in the
    order ``nn.Flatten`` gives a member's ``(N, C, *positions)``."""

    def __init__(self, members: list[nn.Flatten]) -> None:
        super().__init__(len(members))
        if members[0].start_dim != 1 or members[0].end_dim != -1:
            raise NotStackable("the vectorized runner stacks nn.Flatten() with its default dims only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return x
        K, C, N = x.shape[:3]
        return x.movedim(2, -1).reshape(K, -1, N)


class TimeStepNorm(Stacked):
    """:class:`~normlab.lab.models.TimeStepBatchNorm` for K members: a batch norm over
    ``K * C`` channels per time step, the scale and shift per member shared over time."""

    def __init__(self, members: list[models.TimeStepBatchNorm]) -> None:
        super().__init__(len(members))
        self.statistics = nn.ModuleList(ChannelNorm([m.statistics[t] for m in members]) for t in range(len(members[0].statistics)))
        self.weight = nn.Parameter(_stacked([m.weight for m in members]).view(self.K, -1, 1))
        self.bias = nn.Parameter(_stacked([m.bias for m in members]).view(self.K, -1, 1))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        steps = len(self.statistics)
        if t >= steps:
            if self.training:
                raise ValueError(f"TimeStepBatchNorm: has statistics for {steps} time steps, got step {t} in training")
            t = steps - 1
        return self.statistics[t](x) * self.weight + self.bias


class RNN(Stacked):
    """:class:`~normlab.lab.models.RNN` for K members, the same equations on ``(K, C, N)`` states."""

    def __init__(self, members: list[models.RNN]) -> None:
        super().__init__(len(members))
        first = members[0]
        self.stepwise = first.stepwise
        self.inputs = nn.ModuleList(Linear(list(ms)) for ms in zip(*(m.inputs for m in members)))
        self.recurrent = nn.ModuleList(Linear(list(ms)) for ms in zip(*(m.recurrent for m in members)))
        self.norms = nn.ModuleList(stack(list(ms)) for ms in zip(*(m.norms for m in members)))
        self.act = Activation([first.act])
        self.classifier = Linear([m.classifier for m in members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, C, N, L = x.shape
        sequence = x.transpose(2, 3)  # (K, C, L, N): time before samples, so that each step's slice has whole rows
        for i, (inputs, recurrent) in enumerate(zip(self.inputs, self.recurrent)):
            a = inputs(sequence).unbind(2)  # W x_t + b for every step at once, one (K, 3W, N) view per step
            width = recurrent.weight.shape[2]
            h = x.new_zeros(K, width, N)
            states = []
            for t in range(L):
                u = recurrent(h)
                if len(self.norms):
                    u = self.norms[i](u, t) if self.stepwise else self.norms[i](u)
                a_r, a_z, a_n = a[t].chunk(3, 1)
                u_r, u_z, u_n = u.chunk(3, 1)
                r, z = padded(torch.sigmoid, a_r + u_r), padded(torch.sigmoid, a_z + u_z)
                h = (1 - z) * self.act(a_n + r * u_n) + z * h
                states.append(h)
            if i < len(self.inputs) - 1:
                sequence = torch.stack(states, 2)
        return self.classifier(h)


def _sequential(members: list[nn.Sequential]) -> nn.Sequential:
    return nn.Sequential(*(stack(list(layer)) for layer in zip(*members)))


def _is_per_sample(m: nn.Module) -> bool:
    return type(m).__name__ in ("GroupNorm", "LayerNorm") or isinstance(m, (nn.GroupNorm, nn.LayerNorm))


# What becomes what; the first match wins (order matters: ghost batch norm is a batch norm).
RULES = [
    (lambda m: isinstance(m, nn.Sequential), _sequential),
    (lambda m: isinstance(m, models.RNN), RNN),
    (lambda m: isinstance(m, nn.Linear), Linear),
    (lambda m: isinstance(m, (nn.Conv1d, nn.Conv2d)), Conv),
    (lambda m: isinstance(m, models.TimeStepBatchNorm), TimeStepNorm),
    (lambda m: is_batchnorm(m) and hasattr(m, "virtual_batch_size"), GhostNorm),
    (is_batchnorm, ChannelNorm),
    (_is_per_sample, SampleNorm),
    (lambda m: isinstance(m, models.ShiftingNoise), Noise),
    (lambda m: isinstance(m, nn.Dropout), Dropout),
    (lambda m: isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)), Pool),
    (lambda m: isinstance(m, nn.Flatten), Flatten),
    (lambda m: isinstance(m, (nn.Sigmoid, nn.ReLU, nn.Tanh, nn.Identity)), Activation),
]


def stack(members: list[nn.Module]) -> nn.Module:
    """One module training the ``members`` (models of one spec, see the module docstring) at once."""
    first = members[0]
    if any(type(m) is not type(first) for m in members):
        raise NotStackable(f"stack: the members are not all {type(first).__name__}")
    for matches, make in RULES:
        if matches(first):
            return make(members)
    raise NotStackable(f"the vectorized runner has no stacked form of {type(first).__name__}")


def set_generators(model: nn.Module, generators: list[torch.Generator]) -> None:
    """Give every random layer of the stacked ``model`` the members' generators."""
    for m in model.modules():
        if isinstance(m, (Dropout, Noise)):
            m.generators = generators


def _tensors(model: nn.Module, buffers_only: bool = False) -> list[torch.Tensor]:
    """Parameters and buffers in module order (the order a stacked model and its members share)."""
    out = []
    for m in model.modules():
        out += [p for p in m._parameters.values() if p is not None and not buffers_only]
        out += [b for b in m._buffers.values() if b is not None]
    return out


def load_member(stacked: nn.Module, k: int, K: int, into: nn.Module, buffers_only: bool = False) -> nn.Module:
    """Copy member ``k`` of the stacked model into ``into`` (a model of the members' spec); its buffers only, if so asked."""
    mine, theirs = _tensors(stacked, buffers_only), _tensors(into, buffers_only)
    if len(mine) != len(theirs):
        raise RuntimeError(f"load_member: the stacked model holds {len(mine)} tensors, the member {len(theirs)}")
    with torch.no_grad():
        for s, t in zip(mine, theirs):
            t.copy_(member(s, k, K, t))
    return into
