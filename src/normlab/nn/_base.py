"""What every normlab layer adds to the torch class it subclasses.

A normlab layer is an instance of its torch.nn counterpart (``normlab.BatchNorm2d`` is a
``torch.nn.BatchNorm2d``, ``normlab.LayerNorm`` a ``torch.nn.LayerNorm``, ...) and keeps
torch's parameters, buffers, ``reset_*`` methods, ``state_dict`` version and checkpoint
loading. :class:`Layer`, first among its bases, adds what every layer shares:

- ``_name``, how messages name the layer: ``BatchNorm2d(64)``;
- checkpoint checks before torch's own loading: a tensor of another shape, and running
  statistics that can only give NaN (a negative or non-finite variance, a non-finite
  mean), are refused: nothing is loaded into the layer, and ``load_state_dict`` raises
  torch's RuntimeError with a message naming the layer and the key (after loading the
  rest, as torch does for a tensor of the wrong size);
- tracing: under ``torch.fx`` symbolic tracing the call is recorded as one ``call_module``
  node (what fx records for torch.nn's own layers, which it keeps as leaves), so the graph
  runs the layer itself; ``torch.jit.script`` is refused with a clear message by the
  layers torch has no scriptable counterpart for;
- the constructor checks torch makes too late or not at all: sizes that are integers
  (NumPy's included) and positive, an ``eps`` and a ``momentum`` that are finite numbers.
"""

from __future__ import annotations

import numbers
import operator
import warnings

import torch
from torch import nn

from ..functional import check_eps, check_momentum

__all__ = ["Layer", "as_size", "check_arguments", "fx_leaf"]


def as_size(value, what: str, who: str) -> int:
    """``value`` as a positive int (a NumPy integer counts), or a clear ValueError."""
    try:
        size = operator.index(value)
    except TypeError:
        size = None
    if size is None or isinstance(value, bool) or size < 1:
        raise ValueError(f"{who}: {what} must be a positive int, got {value!r}")
    return size


def check_arguments(who: str, eps=None, momentum=None, *, eps_may_be_none: bool = False) -> None:
    """Refuse an ``eps`` or a ``momentum`` that can only give NaN; warn where torch's values are dubious."""
    if not (eps is None and eps_may_be_none):
        check_eps(eps, who)
        if eps == 0:
            warnings.warn(f"{who}: eps=0 divides by zero (NaN or Inf) wherever a group of values is constant",
                          stacklevel=4)
    check_momentum(momentum, who)
    if momentum is not None and not 0 <= momentum <= 1:
        warnings.warn(
            f"{who}: momentum={momentum} lies outside [0, 1]: the running statistics then extrapolate rather "
            "than average (momentum is the weight of the new batch, torch's convention)",
            stacklevel=4,
        )


def fx_leaf(module: nn.Module, *args):
    """Record ``module(*args)`` (trailing Nones dropped) as one call in the torch.fx graph being traced.

    The layer being traced as the root of the graph (``symbolic_trace(layer)``) cannot be a call
    to itself: its graph is then the torch operations of the computation TorchScript compiles
    (``_scripted_forward``), with the layer's options fixed as they are, as fx fixes them when
    it traces torch's own layers.
    """
    while args and args[-1] is None:
        args = args[:-1]
    tracer = args[0].tracer
    path = tracer.path_of_module(module)
    if path:
        return tracer.create_proxy("call_module", path, args, {})
    for extra in args[1:]:  # the root's optional arguments are placeholders: they must stay unused
        if not (isinstance(extra, torch.fx.Proxy) and extra.node.op == "placeholder" and extra.node.args == (None,)):
            raise RuntimeError(f"{module._name}: traced on its own (as the root), the graph of this layer cannot take "
                               f"its optional arguments; trace a model that contains it")
        tracer.create_proxy("call_function", refuse_given, (extra, module._name), {})
    return module._traced_alone(args[0])


def refuse_given(value, name: str) -> None:
    """In the graph of a layer traced on its own: its optional argument (a mask, a residual) must not be given."""
    if value is not None:
        raise RuntimeError(f"{name}: this graph was traced without the layer's optional argument, so it cannot take one")


class Layer:
    """Mixin, first among a normlab layer's bases (see the module docstring)."""

    _scriptable = True  # False where torch has no scriptable counterpart: torch.jit.script then says so
    __jit_unused_properties__ = ["_name"]  # Python only: torch.jit.script leaves it out

    @property
    def _name(self) -> str:
        size = getattr(self, "num_features", None)
        return type(self).__name__ + ("" if size is None else f"({size})")

    def _traced_alone(self, input):
        """What torch.fx records for this layer traced as the root of a graph: its computation in torch
        operations (see :func:`fx_leaf`); refused where that would take Python control flow on the input."""
        raise RuntimeError(
            f"{self._name}: torch.fx traces this layer as one call inside a model; traced on its own (as the root), "
            "its graph would have to spell out its computation, which depends on the input's values or rank: "
            "trace a model that contains it"
        )

    def _options_torch_lacks(self) -> list[str]:
        """The options set on this layer that its torch class has not (``normlab.convert`` asks)."""
        return []

    def __prepare_scriptable__(self):  # torch.jit.script asks this first
        if not self._scriptable:
            raise RuntimeError(
                f"{self._name}: torch.jit.script is not supported (torch has no such layer to script); use "
                "torch.compile, torch.export or torch.jit.trace"
            )
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        refused = self._refuse_checkpoint(state_dict, prefix)
        if refused:
            error_msgs.append(f"{refused}; nothing was loaded into this layer")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _refuse_checkpoint(self, state_dict, prefix) -> str | None:
        """Why this layer cannot take ``state_dict``'s tensors, or None."""
        for key, mine in (*self._parameters.items(), *self._buffers.items()):
            theirs = state_dict.get(prefix + key)
            if mine is None or not isinstance(theirs, torch.Tensor):
                continue
            if mine.dim() and theirs.shape != mine.shape:  # scalars are torch's to judge (it takes (1,) too)
                return (f"{self._name}: the checkpoint's '{prefix + key}' has shape {tuple(theirs.shape)}, expected "
                        f"{tuple(mine.shape)}; it was saved from a layer of another size")
            if key in ("running_mean", "running_var") and not theirs.is_meta and theirs.is_floating_point():
                bad = ~torch.isfinite(theirs) | (theirs < 0 if key == "running_var" else False)
                if bool(bad.any()):
                    channels = torch.nonzero(bad.flatten()).flatten().tolist()
                    return (f"{self._name}: the checkpoint's '{prefix + key}' holds "
                            f"{'negative or non-finite' if key == 'running_var' else 'non-finite'} values (channel(s) "
                            f"{', '.join(map(str, channels[:8]))}{', ...' if len(channels) > 8 else ''}), which can "
                            "only give NaN")
        return None


def positive_ints(values, what: str, who: str) -> tuple[int, ...]:
    """A shape of positive ints (``normalized_shape``), NumPy integers accepted."""
    shape = (values,) if isinstance(values, numbers.Integral) else tuple(values)
    try:
        return tuple(as_size(v, what, who) for v in shape) if shape else as_size(None, what, who)
    except ValueError:
        raise ValueError(f"{who}: {what} must be positive ints, got {values!r}") from None

