"""A Keras-style parameter summary of a PyTorch model.

``print(normlab.summary(model, (20,)))`` runs one forward pass on a batch of zeros in
eval mode (the model's mode is restored), records each layer's output shape, and
counts parameters the way Keras does:

* trainable: parameters with ``requires_grad``;
* non-trainable: frozen parameters and floating-point buffers, the running mean and
  variance of normalization layers among them (Keras's moving mean and variance).
  Integer buffers such as ``num_batches_tracked`` are counters, not weights, and are
  not counted.

This is the one place normlab counts parameters; the other tools use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Summary", "LayerRow", "summary", "count_parameters"]


@dataclass(frozen=True)
class LayerRow:
    name: str  # qualified name in the model
    kind: str  # class name
    output_shape: str  # "(None, 64)": batch dimension shown as None, "-" when never called
    params: int
    calls: int


@dataclass(frozen=True)
class Summary:
    model_name: str
    rows: list[LayerRow]
    trainable: int
    non_trainable: int
    trainable_bytes: int
    non_trainable_bytes: int

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable

    def __str__(self) -> str:
        header = ("Layer (type)", "Output Shape", "Param #")
        cells = [
            (f"{r.name} ({r.kind})" + (f" x{r.calls}" if r.calls > 1 else ""), r.output_shape, f"{r.params:,}")
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in [header, *cells]) + 2 for i in range(3)]

        def line(c):
            return f" {c[0]:<{widths[0]}}{c[1]:<{widths[1]}}{c[2]:>{widths[2]}}"

        width = sum(widths) + 1
        total_bytes = self.trainable_bytes + self.non_trainable_bytes
        return "\n".join(
            [
                f'Model: "{self.model_name}"',
                "-" * width,
                line(header),
                "=" * width,
                *(line(c) for c in cells),
                "=" * width,
                f"Total params: {self.total:,} ({_bytes(total_bytes)})",
                f"Trainable params: {self.trainable:,} ({_bytes(self.trainable_bytes)})",
                f"Non-trainable params: {self.non_trainable:,} ({_bytes(self.non_trainable_bytes)})",
                "-" * width,
            ]
        )


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _counted_tensors(module: nn.Module, recurse: bool):
    """(tensor, trainable) for each parameter and each floating-point persistent buffer."""
    for p in module.parameters(recurse=recurse):
        yield p, p.requires_grad
    for name, b in module.named_buffers(recurse=recurse):
        owner = module.get_submodule(name.rpartition(".")[0]) if recurse else module
        if b.is_floating_point() and name.rpartition(".")[2] not in owner._non_persistent_buffers_set:
            yield b, False


def count_parameters(module: nn.Module, recurse: bool = True) -> tuple[int, int, int, int]:
    """``(trainable, non_trainable, trainable_bytes, non_trainable_bytes)`` as in :func:`summary`."""
    counts = [0, 0, 0, 0]
    seen: set[int] = set()
    for t, trainable in _counted_tensors(module, recurse):
        if id(t) in seen:  # a tensor shared between layers counts once
            continue
        seen.add(id(t))
        i = 0 if trainable else 1
        counts[i] += t.numel()
        counts[i + 2] += t.numel() * t.element_size()
    return tuple(counts)


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return str(("None", *out.shape[1:])).replace("'", "")
    if isinstance(out, (tuple, list)):
        return "[" + ", ".join(_shape(o) for o in out) + "]"
    return type(out).__name__


def summary(
    model: nn.Module,
    input_size=None,
    *,
    input_data=None,
    batch_size: int = 2,
    dtype: torch.dtype | None = None,
) -> Summary:
    """Summarize ``model``: one row per layer, totals split into trainable and non-trainable.

    Give either ``input_size`` (one sample's shape, without the batch dimension, or a
    list of such shapes for a model with several inputs) or ``input_data`` (the
    tensor(s) to call the model with). Layers are listed in the order they run; a layer
    called more than once is listed once with its call count.
    """
    if (input_size is None) == (input_data is None):
        raise ValueError("summary: give exactly one of input_size or input_data")
    if input_data is None:
        param = next(iter(model.parameters()), None)
        kwargs = {
            "dtype": dtype or (param.dtype if param is not None else torch.float32),
            "device": param.device if param is not None else None,
        }
        sizes = [input_size] if isinstance(input_size[0], int) else list(input_size)
        input_data = [torch.zeros(batch_size, *s, **kwargs) for s in sizes]
    inputs = input_data if isinstance(input_data, (tuple, list)) else [input_data]

    names = {m: n for n, m in model.named_modules()}
    reported = [
        m
        for m in names
        if not any(True for _ in m.children()) or any(True for _ in _counted_tensors(m, recurse=False))
    ]
    shapes: dict[nn.Module, str] = {}
    calls: dict[nn.Module, int] = {}
    order: list[nn.Module] = []

    def record(module, _args, output):
        if module not in calls:
            order.append(module)
            shapes[module] = _shape(output)
        calls[module] = calls.get(module, 0) + 1

    handles = [m.register_forward_hook(record) for m in reported]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    rows = [
        LayerRow(
            name=names[m] or type(m).__name__,
            kind=type(m).__name__,
            output_shape=shapes.get(m, "-"),
            params=sum(count_parameters(m, recurse=False)[:2]),
            calls=calls.get(m, 0),
        )
        for m in order + [m for m in reported if m not in calls]
    ]
    return Summary(type(model).__name__, rows, *count_parameters(model))
