"""The normalizations as functions, and the one engine behind every normlab layer.

The public functions have ``torch.nn.functional``'s signatures (``batch_norm``,
``layer_norm``, ``group_norm``, ``instance_norm``, ``rms_norm``) or follow them
(``batch_renorm``, ``ghost_batch_norm``, ``batch_norm_act``, ``mean_only_batch_norm``,
``weight_norm``). Each checks its arguments once, with the caller's name in the messages
(a function's own name, or the layer that calls it), then runs the implementation
:func:`normlab.backends.implementation` picks.

The batch-norm family shares one training step, :func:`batch_norm_train`: it counts the
batch, turns ``momentum=None`` into the cumulative average, applies batch
renormalization's correction when given its limits, takes masked or synchronized
statistics through a :class:`normlab.autograd.Statistics`, splits ghost batches, applies
an activation (``BatchNormAct``), and guards the running statistics against non-finite
batch statistics (:data:`NON_FINITE`). Intent travels as named arguments (``update``,
``limits``), never as special values of ``momentum`` or of the limits.

Checks look at types, shapes and dtypes only, never at tensor values, so that the same
code traces (torch.fx, torch.jit.trace, torch.export, torch.compile); the guard's
host-side reads happen only in eager mode.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

from . import backends
from .activation import ACTIVATIONS, DEFAULT_PARAM, INVERTIBLE, Activation
from .autograd import Statistics, accumulation_dtype, affine
from .backends.normlab import norm_except_dim, per_channel, update_running_stats

__all__ = [
    "NON_FINITE",
    "ONE_VALUE_POLICIES",
    "DtypeError",
    "ShapeError",
    "batch_norm",
    "batch_norm_act",
    "batch_norm_inference",
    "batch_norm_train",
    "batch_renorm",
    "ghost_batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "mean_only_batch_norm",
    "norm_except_dim",
    "rms_norm",
    "update_running_stats",
    "weight_norm",
]

# What a training step does when the batch statistics of a channel come out NaN or infinite
# (the input holds NaN or Inf, or its variance overflows):
#   "skip"       that channel's running statistics keep their values; decided on the device,
#                no synchronization, the same in eager mode and under torch.compile / export
#   "warn"       as "skip", and a RuntimeWarning names the layer and the channels (reads the
#                device: on a GPU one synchronization per training step)
#   "raise"      FloatingPointError naming the layer and the channels; the running statistics
#                and num_batches_tracked stay as they were (reads the device, as "warn")
#   "propagate"  torch's behaviour: the values enter the running statistics
NON_FINITE = ("skip", "warn", "raise", "propagate")

# What a training batch with a single value per channel does (its batch statistics are undefined):
#   "raise"          a clear error
#   "running_stats"  it is normalized with the running statistics, which are left as they were
#   "skip_update"    it is normalized with its own statistics (so the output is the bias) and the
#                    running statistics are left as they were
ONE_VALUE_POLICIES = ("raise", "running_stats", "skip_update")


class ShapeError(ValueError, RuntimeError):
    """An input, parameter or checkpoint of the wrong shape; a RuntimeError too, as torch's own
    error for the same mistake is, so that ``except RuntimeError`` catches it."""


class DtypeError(TypeError, NotImplementedError):
    """An input or parameter of the wrong dtype. Also a NotImplementedError, torch's error for an
    integer input to its batch, instance and RMS norms (and so a RuntimeError, the base of that and
    of its other norms' error): code that catches torch's catches normlab's."""


def label(who) -> str:
    """The name in messages: ``who`` itself, or the name of the layer ``who``."""
    return who if isinstance(who, str) else who._name


# --- checks: types, shapes and dtypes, never values ------------------------------------------


def check_tensor(input, who) -> None:
    """Raise unless ``input`` is a floating-point tensor."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{label(who)}: expected a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise DtypeError(
            f"{label(who)}: expected a floating-point input (float16, bfloat16, float32 or float64), "
            f"got {input.dtype}; convert it first, e.g. x.float()"
        )


def check_dtypes(input: torch.Tensor, who, **tensors) -> None:
    """Raise unless each of ``tensors`` (None skipped) has the input's dtype, or float32 for a
    16-bit input: what torch's kernels accept, so that every backend refuses the same."""
    for name, t in tensors.items():
        if t is not None and t.dtype != input.dtype and not (
            t.dtype == torch.float32 and input.dtype in (torch.float16, torch.bfloat16)
        ):
            raise DtypeError(
                f"{label(who)}: the input is {input.dtype} but {name} is {t.dtype}; give both one dtype "
                f"(e.g. layer.to({input.dtype}) or x.to({t.dtype}))"
            )


def check_channels(input: torch.Tensor, who, channels: int | None, dim: int = 1, **per_channel_tensors) -> None:
    """Raise unless dim ``dim`` of ``input`` holds ``channels`` channels (when given) and each
    per-channel tensor one value per channel."""
    got = input.shape[dim]
    if channels is not None and got != channels:
        raise ShapeError(
            f"{label(who)}: expected {channels} channels in dim {dim} of the input, got {got} "
            f"(input shape {tuple(input.shape)})"
        )
    for name, t in per_channel_tensors.items():
        if t is not None and t.numel() != got:
            raise ShapeError(
                f"{label(who)}: {name} holds {t.numel()} values, but the input has {got} channels in dim {dim} "
                f"(input shape {tuple(input.shape)})"
            )


def check_batch(input, who, channels: int | None, weight, bias, running_mean, running_var) -> None:
    """The checks of a batch-norm input and its per-channel tensors, in one pass: a floating-point
    tensor of rank 2 or more, ``channels`` channels in dim 1 (when given), one value per channel in
    each per-channel tensor, and their dtypes (:func:`check_dtypes`). Each failure has its message."""
    if not isinstance(input, torch.Tensor) or not input.is_floating_point():
        check_tensor(input, who)
    if input.dim() < 2:
        raise ShapeError(f"{label(who)}: expected an input of shape (N, C, *), got a {input.dim()}-D input "
                         f"of shape {tuple(input.shape)}")
    c, dtype = input.shape[1], input.dtype
    fine = channels is None or c == channels
    for t in (weight, bias, running_mean, running_var):
        fine = fine and (t is None or (t.numel() == c and t.dtype == dtype))
    if not fine:  # the detailed checks say what is wrong (or find a 16-bit input with float32 statistics)
        check_channels(input, who, channels, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
        check_dtypes(input, who, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)


def batch_mask(input: torch.Tensor, mask: torch.Tensor | None, who) -> torch.Tensor | None:
    """Check a padding mask for ``input`` and view it as ``(N, 1, *spatial)``; None stays None.

    ``mask`` is a bool tensor shaped like the input without its channel axis (``(N, L)``
    for an ``(N, C, L)`` sequence batch), True where a value is real, False where padded.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise DtypeError(f"{label(who)}: expected a bool mask (True where a value is real), got {got}; e.g. mask.bool()")
    expected = (input.shape[0], *input.shape[2:])
    if tuple(mask.shape) != expected:
        raise ShapeError(
            f"{label(who)}: expected a mask of shape {expected} (the input's shape without its channel "
            f"axis), got {tuple(mask.shape)} for an input of shape {tuple(input.shape)}"
        )
    if mask.device != input.device:
        raise ValueError(f"{label(who)}: the mask is on {mask.device}, the input on {input.device}")
    return mask.unsqueeze(1)


def check_eps(eps, who, allow_zero: bool = True) -> None:
    """Raise unless ``eps`` is a finite number >= 0 (> 0 where a zero variance would divide by 0)."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0 or (
        not allow_zero and eps == 0
    ):
        raise ValueError(f"{label(who)}: eps must be a finite number {'>=' if allow_zero else '>'} 0, got {eps!r}")


def check_momentum(momentum, who) -> None:
    """Raise unless ``momentum`` is None or a finite number (torch accepts any; see the layers)."""
    if momentum is not None and (
        isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not math.isfinite(momentum)
    ):
        raise ValueError(
            f"{label(who)}: momentum is the weight of the new batch in the running averages, a finite number "
            f"(or None for the cumulative average); got {momentum!r}"
        )


def values_per_channel(input: torch.Tensor) -> int:
    """m: how many values each channel's batch statistics are taken over."""
    return input.numel() // input.shape[1] if input.dim() > 1 and input.shape[1] else 0


def batch_dims(input: torch.Tensor) -> tuple[int, ...]:
    """The axes batch statistics are taken over: every axis but the channel axis, dim 1."""
    return (0, *range(2, input.dim()))


# --- batch norm: the engine ------------------------------------------------------------------


def _in_trace(t: torch.Tensor | None = None) -> bool:
    """Whether this runs where tensor values cannot be read on the host: a trace (torch.compile,
    torch.export, torch.jit.trace) or, for ``t``, under a torch.func transform (vmap, also
    beneath a grad: the tensor seen is then grad's wrapper around vmap's)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or (
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t))


def _scratch_statistics(input: torch.Tensor, weight: torch.Tensor | None):
    """Running mean and variance for a kernel to write a batch's own statistics into (at momentum 1)
    where the caller keeps none: a variance that overflowed shows there, looked at as the guard looks."""
    dtype = weight.dtype if weight is not None else input.dtype
    return torch.zeros(input.shape[1], dtype=dtype), torch.ones(input.shape[1], dtype=dtype)


def _overflowed(input: torch.Tensor, variance: torch.Tensor | None = None, rstd: torch.Tensor | None = None) -> bool:
    """Whether a finite ``input`` got a non-finite ``variance`` or a ``1 / sigma`` of 0 or NaN: its variance
    overflowed in the kernel (None: nothing was looked at)."""
    if variance is not None:
        bad = not math.isfinite(float(variance.sum()))
    elif rstd is not None:
        bad = not bool((rstd > 0).all())
    else:
        return False
    return bad and bool(torch.isfinite(input).all())


class _Guard:
    """The guard on running statistics around one update (see :data:`NON_FINITE`).

    ``buffers`` are the running statistics the update writes; :attr:`targets` are what to
    give the operation instead. Decided on the host (eager, CPU, or a mode that reads the
    device anyway), the operation updates the buffers in place, as torch's kernels do, and
    the rare bad channels get their old values back. Decided on the device (a GPU with
    ``"skip"``, or a trace), the operation updates copies, which then go into the buffers
    where they are finite: no synchronization and no data-dependent control flow. A backend
    whose kernel skips non-finite updates itself (``backends.SKIPPING``) needs no guard for
    ``"skip"``.
    """

    def __init__(self, buffers, non_finite: str, num_batches_tracked, who) -> None:
        self.buffers, self.non_finite, self.num_batches_tracked, self.who = buffers, non_finite, num_batches_tracked, who
        self.on_device = (non_finite == "skip" and buffers[0].device.type != "cpu") or _in_trace(buffers[0])
        if self.on_device:  # copies for the operation to update
            self.saved = self.targets = tuple(b.clone() for b in buffers)
        else:  # the old values, in one copy of all of them
            self.saved = torch.stack(buffers) if len(buffers) > 1 else buffers[0].clone()[None]
            self.targets = buffers

    def undo(self) -> None:
        """The operation failed: put the old values back."""
        if not self.on_device:
            self._restore(self.saved)

    def _restore(self, values) -> None:
        # .data: torch's kernel saved the buffers for its backward (unused in training); giving them back
        # their old values must not read as a modification of what it saved
        for b, old in zip(self.buffers, values):
            b.data.copy_(old)

    def finish(self, input: torch.Tensor) -> bool:
        """Keep the new values where finite; elsewhere the old ones, then warn or raise as asked.

        Returns whether the input was finite but its variance overflowed (found on the host only):
        the caller's output is then wrong too, and worth computing again where it cannot overflow.
        """
        if not self.on_device and math.isfinite(float(self.targets[-1].sum())):
            # the common case, at the cost of one sum: the last buffer is the variance where there is one,
            # which a non-finite mean makes non-finite too; a finite sum has finite terms (an overflowing
            # sum of finite terms only takes the careful path below)
            return False
        ok = torch.isfinite(self.targets[0])
        for t in self.targets[1:]:
            ok &= torch.isfinite(t)
        if self.on_device:  # (no torch.no_grad() here: nothing needs grad, and torch 2.4's export trips on it)
            for b, new in zip(self.buffers, self.targets):
                b.copy_(torch.where(ok, new, b))
            return False
        if bool(ok.all()):
            return False
        self._restore(self.saved if self.non_finite == "raise" else [torch.where(ok, b, old) for b, old in
                                                                       zip(self.buffers, self.saved)])
        overflowed = bool(torch.isfinite(input).all())
        if self.non_finite == "skip":
            return overflowed
        channels = torch.nonzero(~ok).flatten().tolist()
        shown = ", ".join(map(str, channels[:8])) + (", ..." if len(channels) > 8 else "")
        if overflowed:
            cause = (f"the input is finite, but its variance overflows {input.dtype} (values of magnitude up to "
                     f"{float(input.detach().abs().amax()):.3g})")
        else:
            cause = "the input holds NaN or Inf"
        if self.non_finite == "warn":
            warnings.warn(f"{label(self.who)}: the batch statistics of channel(s) {shown} are not finite: {cause}. "
                          "Their running statistics were left as they were.", RuntimeWarning, stacklevel=5)
            return overflowed
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.sub_(1)
        raise FloatingPointError(
            f"{label(self.who)}: the batch statistics of channel(s) {shown} are not finite: {cause}. The running "
            "statistics were left as they were. Look for what produced the values upstream (or scale a huge "
            f"input down), or choose another non_finite policy {NON_FINITE} for the layer."
        )


def _one_step(input, running_mean, running_var, weight, bias, momentum, eps, update, num_batches_tracked, mask,
              limits, act, statistics, one_value, non_finite, who):
    """The training step of one batch (or one ghost batch); see :func:`batch_norm_train`."""
    if mask is None and statistics is Statistics:
        stats, count = None, values_per_channel(input)
    else:
        stats = statistics(input, batch_dims(input), mask)
        count = stats.count
    if count == 1 or (count == 0 and input.numel() > 0):
        if one_value == "raise":
            where = "" if mask is None else f" and {count} unmasked value(s) per channel"
            raise ValueError(
                f"{label(who)}: training needs more than one value per channel to compute batch statistics, got "
                f"an input of shape {tuple(input.shape)}{where}. Use a batch of at least 2 samples, or call .eval() "
                "to normalize with the running statistics (or choose another one_value_per_channel policy)."
            )
        if one_value == "running_stats":
            return batch_norm_inference(input, running_mean, running_var, weight, bias, eps, act, who=who, checked=True)
        update = False  # "skip_update"
        if stats is None:  # torch's kernels refuse one value; normlab's own normalizes it to 0
            stats = Statistics(input, batch_dims(input))
    if act is not None:
        weight = act.scale(weight, eps)
    update = update and running_mean is not None and running_var is not None
    if count == 0:  # an empty batch: no statistics, the running ones left alone; counted, as torch does
        if update and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        y = affine(input, per_channel(weight, input.dim()), per_channel(bias, input.dim()))
        return y if act is None else act(y)
    factor = 0.0
    if update and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if update:
        factor = momentum if momentum is not None else 1.0 / float(num_batches_tracked)
    moments = None
    if limits is not None:  # batch renormalization: r and d become the weight and bias of a batch norm
        rmax, dmax = limits
        # r and d are constants in the backward pass: taken from the detached input (not under
        # torch.no_grad(), which torch 2.4's export mishandles)
        taken = stats if stats is not None else Statistics(input, batch_dims(input))
        _, moments = taken.centered(input.detach().to(accumulation_dtype(input.dtype)))
        sigma = torch.sqrt(running_var + eps)
        r = (torch.sqrt(moments.var.reshape(-1) + eps) / sigma).clamp(1 / rmax, rmax).to(sigma.dtype)
        d = (((moments.shift + moments.mean_shifted).reshape(-1) - running_mean) / sigma).clamp(-dmax, dmax)
        weight, bias = affine(r, weight, None), affine(d, weight, bias)
    op = "batch_norm" if act is None else act.op
    # a backend that keeps non-finite updates out of the running statistics by itself (its kernel
    # decides, on the device) gets the buffers and no guard: nothing copied, nothing waited for
    skipping = backends.skipping_implementation(op, input) if update and non_finite == "skip" and stats is None \
        else None
    guard = _Guard((running_mean, running_var), non_finite, num_batches_tracked, who) \
        if update and non_finite != "propagate" and skipping is None else None
    rm, rv = (running_mean, running_var) if guard is None else guard.targets
    if not update:
        rm = rv = None
    scratch = None
    if not update and stats is None and input.numel() and input.device.type == "cpu" and not _in_trace(input):
        # no running statistics to guard, yet the kernel's variance can overflow as well (a huge finite input)
        (rm, rv), factor = _scratch_statistics(input, weight), 1.0
        scratch = rv
    try:
        if stats is None:
            impl = skipping or backends.implementation(op, input)
            if act is None:
                y = impl(input, rm, rv, weight, bias, True, factor, eps)
            else:
                y = impl(input, rm, rv, weight, bias, True, factor, eps, act)
        else:  # masked or synchronized statistics (``moments``: taken already, for renormalization)
            impl = backends.implementation("batch_norm_statistics", input)
            y = impl(input, stats, rm, rv, weight, bias, factor, eps, moments, act)
    except BaseException:
        if update and num_batches_tracked is not None:
            num_batches_tracked.sub_(1)
        if guard is not None:
            guard.undo()
        raise
    if (_overflowed(input, scratch) or guard is not None and guard.finish(input)) and stats is None:
        # a finite input whose variance overflowed in the kernel: its output is wrong as well; normlab's
        # own implementation takes that variance in float64 (the running statistics keep their values)
        if act is None:
            y = backends.TABLE[op]["normlab"](input, None, None, weight, bias, True, factor, eps)
        else:
            y = backends.TABLE[op]["normlab"](input, None, None, weight, bias, True, factor, eps, act)
    return y


def batch_norm_train(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float | None,
    eps: float,
    *,
    update: bool = True,
    num_batches_tracked: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    limits: tuple[float, float] | None = None,
    virtual_batch_size: int | None = None,
    act: Activation | None = None,
    statistics=Statistics,
    one_value: str = "raise",
    non_finite: str = "skip",
    channels: int | None = None,
    who="batch_norm",
) -> torch.Tensor:
    r"""Batch norm of a training batch: normalize with its statistics, update the running ones.

    :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta` per channel (dim 1)
    over every other axis, with the batch mean and biased variance; with ``update`` (and
    running statistics given) ``running = (1 - f) * running + f * batch`` with the unbiased
    variance, where ``f`` is ``momentum``, or with ``momentum=None`` ``1 / n`` for the n-th
    batch counted in ``num_batches_tracked`` (which is counted for every batch taken in).

    normlab's additions, each a named argument:

    - ``mask``: a bool tensor shaped like the input without dim 1, False at padded
      positions, which the statistics leave out (see :func:`batch_mask`);
    - ``limits=(rmax, dmax)``: batch renormalization (:func:`batch_renorm`);
    - ``virtual_batch_size``: ghost batch norm, each virtual batch in turn (:func:`ghost_batch_norm`);
    - ``act``: an activation after the normalization (:func:`batch_norm_act`);
    - ``statistics``: how the statistics are taken, a :class:`normlab.autograd.Statistics`
      class or factory ``(input, dims, mask)`` (``normlab.nn.sync``: over a process group);
    - ``one_value``: what a batch of one value per channel does (:data:`ONE_VALUE_POLICIES`);
    - ``non_finite``: what non-finite batch statistics do to the running ones (:data:`NON_FINITE`);
    - ``channels``: the channel count the caller expects; ``who``: the name in messages.
    """
    check_batch(input, who, channels, weight, bias, running_mean, running_var)
    if not (isinstance(eps, float) and eps > 0 and eps != math.inf):
        check_eps(eps, who, allow_zero=False)  # as torch: a batch's variance can be 0
    if momentum is not None and not (isinstance(momentum, float) and math.isfinite(momentum)):
        check_momentum(momentum, who)
    mask = batch_mask(input, mask, who)
    if limits is not None and (running_mean is None or running_var is None):
        raise ValueError(f"{label(who)}: batch renormalization needs running_mean and running_var: r and d "
                         "compare the batch statistics with them")
    step = (input, running_mean, running_var, weight, bias, momentum, eps, update, num_batches_tracked)
    options = (limits, act, statistics, one_value, non_finite, who)
    if virtual_batch_size is None or input.shape[0] <= virtual_batch_size:
        return _one_step(*step[:9], mask, *options)
    if act is not None and act.residual is not None:
        raise ValueError(f"{label(who)}: ghost batches take no residual")
    masks = [None] * input.shape[0] if mask is None else mask.split(virtual_batch_size)
    # a refused virtual batch undoes the ones before it: the whole step is refused
    state = [t for t in (running_mean, running_var, num_batches_tracked) if t is not None] if update else []
    before = [t.clone() for t in state]
    try:
        return torch.cat([_one_step(x, *step[1:9], m, *options) for x, m in zip(input.split(virtual_batch_size), masks)])
    except BaseException:
        with torch.no_grad():
            for t, old in zip(state, before):
                t.copy_(old)
        raise


def batch_norm_inference(input, mean, var, weight, bias, eps, act: Activation | None = None, *, who="batch_norm",
                         channels: int | None = None, checked: bool = False) -> torch.Tensor:
    """``weight * (x - mean) / sqrt(var + eps) + bias`` with given per-channel statistics, then ``act``."""
    if not checked:
        check_batch(input, who, channels, weight, bias, mean, var)
        if mean is None or var is None:
            raise ValueError(f"{label(who)}: evaluation needs running_mean and running_var")
        if not (isinstance(eps, float) and 0 <= eps < math.inf):
            check_eps(eps, who)
    if act is None:
        return backends.implementation("batch_norm", input)(input, mean, var, weight, bias, False, 0.0, eps)
    weight = act.scale(weight, eps)
    return backends.implementation(act.op, input)(input, mean, var, weight, bias, False, 0.0, eps, act)


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Batch normalization per channel (dim 1) over every other axis.

    Same signature and semantics as :func:`torch.nn.functional.batch_norm`. In
    training, :math:`y = \gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta` with
    the batch mean and biased variance, and the running statistics (when given) are
    updated in place with the unbiased variance. Otherwise
    :math:`y = \gamma (x - \hat\mu) / \sqrt{\hat\sigma^2 + \epsilon} + \beta` with the
    running statistics.

    ``mask`` (normlab's addition): a bool tensor shaped like the input without dim 1,
    False at padded positions, which the batch statistics then leave out; see
    :func:`batch_mask`.
    """
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps)
    return batch_norm_train(input, running_mean, running_var, weight, bias, momentum, eps, mask=mask,
                            non_finite="propagate")


def batch_renorm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    rmax: float = 3.0,
    dmax: float = 5.0,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Batch renormalization (Ioffe 2017): batch norm corrected towards the running statistics.

    Training: :math:`y = \gamma (\hat x\, r + d) + \beta` with :math:`\hat x` batch norm's,
    :math:`r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma)` and
    :math:`d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mu) / \sigma)`, constants in the
    backward pass, where :math:`\sigma_B = \sqrt{\sigma_B^2 + \epsilon}` (biased batch
    variance) and :math:`\mu`, :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}` are the
    running statistics before this step updates them, as batch norm does. Evaluation:
    batch norm with the running statistics. ``rmax=1, dmax=0`` is batch norm.
    """
    if not rmax >= 1 or not dmax >= 0:
        raise ValueError(f"batch_renorm: needs rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps, who="batch_renorm")
    if running_mean is None or running_var is None:
        raise ValueError("batch_renorm: training needs running_mean and running_var: r and d compare the batch "
                         "statistics with them")
    return batch_norm_train(input, running_mean, running_var, weight, bias, momentum, eps, mask=mask,
                            limits=(rmax, dmax), non_finite="propagate", who="batch_renorm")


def ghost_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ghost batch normalization (Hoffer et al. 2017): :func:`batch_norm` of each virtual batch.

    In training the input is split along dim 0 into virtual batches of
    ``virtual_batch_size`` samples (the last may be smaller), each normalized with its own
    statistics and each updating the running statistics in turn, as batch norm would if
    it saw them one after another. Evaluation: batch norm with the running statistics.
    """
    if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, numbers.Integral) or virtual_batch_size < 1:
        raise ValueError(f"ghost_batch_norm: virtual_batch_size must be a positive int, got {virtual_batch_size!r}")
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps, who="ghost_batch_norm")
    return batch_norm_train(input, running_mean, running_var, weight, bias, momentum, eps, mask=mask,
                            virtual_batch_size=int(virtual_batch_size), non_finite="propagate", who="ghost_batch_norm")


def batch_norm_act(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    activation: str = "relu",
    *,
    negative_slope: float = DEFAULT_PARAM["leaky_relu"],
    alpha: float = DEFAULT_PARAM["elu"],
    residual: torch.Tensor | None = None,
    inplace_abn: bool = False,
) -> torch.Tensor:
    r"""``act(batch_norm(input, ...) + residual)``, in one kernel on the Triton backend.

    ``activation`` is one of ``"identity", "relu", "leaky_relu"`` (with
    ``negative_slope``), ``"elu"`` (with ``alpha``), ``"silu", "sigmoid"``; ``residual``
    (optional, the shape of ``input``) is added before it, as at the end of a ResNet block.
    The other arguments are :func:`batch_norm`'s.

    With ``inplace_abn`` this is in-place activated batch norm (Rota Bulo et al. 2018):
    only the output is kept for backward, which recomputes the normalized input from it
    by inverting the activation. That needs an invertible activation (``identity``,
    ``leaky_relu`` with ``negative_slope > 0``, ``elu`` with ``alpha > 0``), no residual,
    and a scale that cannot be 0: the layer's scale is ``|weight| + eps``, as in the paper.
    """
    act = activation_for("batch_norm_act", input, activation, negative_slope, alpha, residual, inplace_abn)
    if not training:
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps, act, who="batch_norm_act")
    return batch_norm_train(input, running_mean, running_var, weight, bias, momentum, eps, act=act,
                            non_finite="propagate", who="batch_norm_act")


def activation_for(who, input, activation: str, negative_slope: float, alpha: float, residual, inplace_abn: bool,
                   ) -> Activation:
    """The :class:`Activation` that ``act(y + residual)`` describes, checked."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{label(who)}: unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    param = {"leaky_relu": negative_slope, "elu": alpha}.get(activation, 0.0)
    if activation in DEFAULT_PARAM and not (isinstance(param, (int, float)) and math.isfinite(param)):
        name = "negative_slope" if activation == "leaky_relu" else "alpha"  # NaN or Inf: every negative input is lost
        raise ValueError(f"{label(who)}: {activation}'s {name} must be a finite number, got {param!r}")
    if inplace_abn and (activation not in INVERTIBLE or (activation in DEFAULT_PARAM and not param > 0)):
        raise ValueError(
            f"{label(who)}: in-place activated batch norm recomputes its input from its output, so it needs an "
            "invertible activation: identity, leaky_relu with negative_slope > 0 or elu with alpha > 0; got "
            f"{activation!r}" + (f" with parameter {param}" if activation in DEFAULT_PARAM else "")
        )
    if residual is not None:
        if inplace_abn:
            raise ValueError(f"{label(who)}: in-place activated batch norm takes no residual (it could not "
                             "recompute its input from the output)")
        if not isinstance(residual, torch.Tensor) or residual.shape != getattr(input, "shape", None):
            got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__
            raise ShapeError(f"{label(who)}: expected a residual of the input's shape "
                             f"{tuple(getattr(input, 'shape', ()))}, got {got}")  # fmt: skip
    return Activation(activation, param, residual, inplace_abn)


# --- torch's CPU kernels where a variance overflows ------------------------------------------


def _looked_at(op: str, impl, input: torch.Tensor) -> bool:
    """Whether to take torch's kernel for ``op`` through its ``native_*`` form, whose ``1 / sigma``
    shows an overflowed variance: torch's CPU kernels take the variance in the input's own float
    type, which beyond about 1e19 (float32, bfloat16) overflows to give zeros or NaN. Only in eager
    mode on the CPU, where looking costs a reduction of one value per normalized group, and outside
    autocast (which casts torch's norms to float32, not their ``native_*`` forms)."""
    return (impl is backends.TABLE[op].get("native") and input.device.type == "cpu"
            and input.dtype in (torch.float32, torch.bfloat16) and input.numel() > 0 and not _in_trace(input)
            and not torch.is_autocast_enabled("cpu"))


# --- layer, group, instance and RMS norm -----------------------------------------------------


def check_normalized_shape(input: torch.Tensor, normalized_shape: tuple[int, ...], who) -> None:
    """Raise unless ``input`` ends in ``normalized_shape`` (layer norm and RMS norm)."""
    k = len(normalized_shape)
    if input.dim() < k or tuple(input.shape[input.dim() - k :]) != normalized_shape:
        raise ShapeError(
            f"{label(who)}: expected an input whose last {k} dim(s) are {normalized_shape}, got an input of "
            f"shape {tuple(input.shape)}"
        )


def _check_params(normalized_shape: tuple[int, ...], who, **params) -> None:
    for name, p in params.items():
        if p is not None and tuple(p.shape) != normalized_shape:
            raise ShapeError(f"{label(who)}: expected {name} of shape {normalized_shape}, got {tuple(p.shape)}")


def _as_shape(normalized_shape) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else tuple(normalized_shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, who="layer_norm") -> torch.Tensor:
    r"""Layer normalization (Ba et al. 2016) over the trailing ``normalized_shape`` axes.

    Same signature and semantics as :func:`torch.nn.functional.layer_norm`:
    :math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta` with the mean and biased
    variance of each sample's trailing axes; ``weight`` and ``bias`` of shape ``normalized_shape``.
    """
    normalized_shape = _as_shape(normalized_shape)
    check_tensor(input, who)
    check_normalized_shape(input, normalized_shape, who)
    _check_params(normalized_shape, who, weight=weight, bias=bias)
    check_dtypes(input, who, weight=weight, bias=bias)
    check_eps(eps, who)
    impl = backends.implementation("layer_norm", input)
    if _looked_at("layer_norm", impl, input):
        y, _, rstd = torch.native_layer_norm(input, normalized_shape, weight, bias, eps)
        if not _overflowed(input, rstd=rstd):
            return y
        impl = backends.TABLE["layer_norm"]["normlab"]  # takes the mean square in float64 where it must
    return impl(input, normalized_shape, weight, bias, eps)


def _rms_norm_promotes() -> bool:
    """Whether this torch's rms_norm gives a float32 input times a float64 weight in float64.

    torch 2.4's composite normalizes in the input's dtype and then multiplies by the weight,
    so the weight's dtype wins; later versions compute in the input's dtype (and warn).
    Asked of torch itself, once, rather than guessed from its version number."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weight = torch.ones(2, dtype=torch.float64)
        return torch.nn.functional.rms_norm(torch.ones(1, 2), (2,), weight).dtype == torch.float64


_RMS_NORM_PROMOTES = _rms_norm_promotes()


def rms_norm(input, normalized_shape, weight=None, eps: float | None = None, *, who="rms_norm") -> torch.Tensor:
    r"""RMS normalization (Zhang & Sennrich 2019) over the trailing ``normalized_shape`` axes.

    Same signature and semantics as :func:`torch.nn.functional.rms_norm`:
    :math:`y = \gamma x / \sqrt{\mathrm{mean}(x^2) + \epsilon}`, no centering, no bias.
    ``eps=None`` is the machine epsilon of the type the statistics are computed in
    (float32 for 16-bit and 32-bit inputs, float64 for float64), as in torch.
    """
    normalized_shape = _as_shape(normalized_shape)
    check_tensor(input, who)
    check_normalized_shape(input, normalized_shape, who)
    _check_params(normalized_shape, who, weight=weight)
    if weight is not None and weight.is_floating_point() and weight.dtype != input.dtype and not (
            weight.dtype == torch.float32 and input.dtype in (torch.float16, torch.bfloat16)):
        # torch's RMSNorm, alone among its norms, takes a weight of another dtype: so does normlab, as this torch does
        if _RMS_NORM_PROMOTES:
            return rms_norm(input, normalized_shape, None, eps, who=who) * weight
        warnings.warn(f"{label(who)}: the input is {input.dtype} but weight is {weight.dtype}; computing in the "
                      f"input's dtype, as torch does (give both one dtype to silence this)", stacklevel=3)
        weight = weight.to(input.dtype)
    check_dtypes(input, who, weight=weight)
    if eps is None:  # resolved here, not left to torch: before 2.7, torch took a 16-bit input's own epsilon
        eps = torch.finfo(accumulation_dtype(input.dtype)).eps
    check_eps(eps, who)
    impl = backends.implementation("rms_norm", input)
    if hasattr(torch, "_fused_rms_norm") and _looked_at("rms_norm", impl, input):  # (torch 2.4 has no such form)
        y, rstd = torch._fused_rms_norm(input, list(normalized_shape), weight, eps)
        if not _overflowed(input, rstd=rstd):
            return y
        impl = backends.TABLE["rms_norm"]["normlab"]
    return impl(input, normalized_shape, weight, eps)


def check_groups(input: torch.Tensor, num_groups: int, who) -> None:
    """Raise unless ``input`` is ``(N, C, *)`` with C divisible into ``num_groups`` groups of
    more than one value each (a group of one value normalizes to 0 whatever it holds)."""
    if input.dim() < 2:
        raise ShapeError(f"{label(who)}: expected an input of shape (N, C, *), got a {input.dim()}-D input of "
                         f"shape {tuple(input.shape)}")
    channels = input.shape[1]
    if channels % num_groups:
        raise ShapeError(f"{label(who)}: the {channels} channels of the input do not divide into {num_groups} groups")
    if channels // num_groups * math.prod(input.shape[2:]) == 1 and input.shape[0] > 0:
        raise ValueError(
            f"{label(who)}: each group holds a single value ({channels // num_groups} channel per group, "
            f"spatial size {tuple(input.shape[2:])}), which normalizes to 0 "
            f"whatever it is; got an input of shape {tuple(input.shape)}. Use fewer groups."
        )


def group_norm(input, num_groups: int, weight=None, bias=None, eps: float = 1e-5, *, who="group_norm",
               channels: int | None = None) -> torch.Tensor:
    r"""Group normalization (Wu & He 2018): the channels of each sample in ``num_groups`` groups.

    Same signature and semantics as :func:`torch.nn.functional.group_norm`.
    Unlike torch, a group of one value is refused for every batch size, not only for N = 1.
    """
    check_tensor(input, who)
    if input.dim() >= 2:
        check_channels(input, who, channels, weight=weight, bias=bias)
    check_groups(input, num_groups, who)
    check_dtypes(input, who, weight=weight, bias=bias)
    check_eps(eps, who)
    impl = backends.implementation("group_norm", input)
    if _looked_at("group_norm", impl, input):
        x = input if input.is_contiguous() or input.dim() == 4 and input.is_contiguous(
            memory_format=torch.channels_last) else input.contiguous()  # what torch's group_norm hands its kernel
        y, _, rstd = torch.native_group_norm(x, weight, bias, x.shape[0], x.shape[1], math.prod(x.shape[2:]),
                                             num_groups, eps)
        if not _overflowed(input, rstd=rstd):
            return y
        impl = backends.TABLE["group_norm"]["normlab"]
    return impl(input, num_groups, weight, bias, eps)


def instance_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    non_finite: str = "propagate",
    channels: int | None = None,
    who="instance_norm",
) -> torch.Tensor:
    r"""Instance normalization (Ulyanov et al. 2016): each channel of each sample over its spatial axes.

    Same signature and semantics as :func:`torch.nn.functional.instance_norm`. With
    ``use_input_stats``, :math:`y = \gamma (x - \mu_{nc}) / \sqrt{\sigma_{nc}^2 + \epsilon} + \beta`,
    and running statistics, when given, are updated with the average over the batch of
    the instances' means and unbiased variances (torch's rule). Otherwise the running
    statistics normalize, exactly as batch norm does at inference. ``non_finite`` guards
    the running statistics as batch norm's does (:data:`NON_FINITE`).
    """
    check_tensor(input, who)
    if input.dim() < 3:
        raise ShapeError(f"{label(who)}: expected an input of shape (N, C, *spatial), got a {input.dim()}-D input "
                         f"of shape {tuple(input.shape)}")
    check_channels(input, who, channels, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    check_dtypes(input, who, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    check_eps(eps, who)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(f"{label(who)}: use_input_stats=False needs running_mean and running_var")
        return batch_norm_inference(input, running_mean, running_var, weight, bias, eps, who=who, checked=True)
    if math.prod(input.shape[2:]) == 1:
        raise ValueError(
            f"{label(who)}: normalizing each instance needs more than one spatial value, got an input of shape "
            f"{tuple(input.shape)}"
        )
    if input.numel() == 0:  # an empty batch: no statistics, the running ones left alone
        return affine(input, per_channel(weight, input.dim()), per_channel(bias, input.dim()))
    impl = backends.implementation("instance_norm", input)
    guard = _Guard((running_mean, running_var), non_finite, None, who) \
        if running_mean is not None and running_var is not None and non_finite != "propagate" else None
    rm, rv = (running_mean, running_var) if guard is None else guard.targets
    scratch = None
    if rv is None and _looked_at("instance_norm", impl, input):  # no running statistics, as batch norm
        (rm, rv), momentum = _scratch_statistics(input, weight), 1.0
        scratch = rv
    y = impl(input, rm, rv, weight, bias, True, momentum, eps)
    if _overflowed(input, scratch) or guard is not None and guard.finish(input):
        # a finite input whose variance overflowed in torch's kernel: normlab's own takes it in float64
        y = backends.TABLE["instance_norm"]["normlab"](input, None, None, weight, bias, True, momentum, eps)
    return y


# --- mean-only batch norm and weight norm: no division by a standard deviation ----------


def mean_only_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    *,
    non_finite: str = "propagate",
    channels: int | None = None,
    who="mean_only_batch_norm",
) -> torch.Tensor:
    r"""Mean-only batch normalization (Salimans & Kingma 2016, section 4): per channel (dim 1),
    :math:`y = x - \mu_B + \beta` in training, with the batch mean over every other axis, and
    :math:`y = x - \hat\mu + \beta` otherwise. In training the running mean, when given, is
    updated as batch norm's: ``running_mean = (1 - momentum) * running_mean + momentum * mean``.
    ``non_finite`` guards it as batch norm's guard does (:data:`NON_FINITE`).

    torch has no such operation, so this always runs normlab's own implementation.
    """
    check_tensor(input, who)
    if input.dim() < 2:
        raise ShapeError(f"{label(who)}: expected an input of shape (N, C, *), got a {input.dim()}-D input "
                         f"of shape {tuple(input.shape)}")
    check_channels(input, who, channels, bias=bias, running_mean=running_mean)
    check_dtypes(input, who, bias=bias, running_mean=running_mean)
    if not training and running_mean is None:
        raise ValueError(f"{label(who)}: evaluation needs running_mean")
    if training and values_per_channel(input) == 1:
        raise ValueError(
            f"{label(who)}: training needs more than one value per channel (with one, the output is the bias "
            f"whatever the input), got an input of shape {tuple(input.shape)}. Use a batch of at least 2 samples, "
            "or call .eval() to subtract the running mean."
        )
    if training and input.numel() == 0:
        return affine(input, None, per_channel(bias, input.dim()))
    impl = backends.implementation("mean_only_batch_norm", input)
    guard = _Guard((running_mean,), non_finite, None, who) \
        if training and running_mean is not None and non_finite != "propagate" else None
    y = impl(input, running_mean if guard is None else guard.targets[0], bias, training, momentum)
    if guard is not None:
        guard.finish(input)
    return y


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int | None = 0) -> torch.Tensor:
    r"""Weight normalization (Salimans & Kingma 2016): :math:`w = g \, v / \lVert v \rVert`.

    The norm is over every axis of ``v`` but ``dim`` (one ``g`` per slice along ``dim``,
    e.g. per output unit for ``dim=0``), or over all of ``v`` for ``dim`` None or -1.
    Same semantics as ``torch._weight_norm(v, g, dim)``, which
    :func:`torch.nn.utils.parametrizations.weight_norm` runs.
    """
    dim = -1 if dim is None else dim
    return backends.implementation("weight_norm", v)(v, g, dim)
