"""The catalog of normlab's normalizations, from which ``docs/normalizations.md`` is written.

One :class:`Entry` per layer: its formula, the axes its statistics are taken over, what
it keeps for inference, when to use it and where it comes from. The page cannot drift
from the code: ``tests/nn/test_catalog.py`` checks that every layer in ``normlab.nn``
has an entry, that the page is what :func:`render` writes, and, by running each layer,
that its statistics really are taken over the axes its entry states and that its
inference output does (or does not) depend on the rest of the batch as stated.

Regenerate the page with ``python -m normlab.nn.catalog > docs/normalizations.md``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    layer: str  # class name in normlab.nn
    formula: str  # Markdown, one line
    statistics: str  # over which axes, in words
    inference: str  # what the layer uses at inference
    when: str  # when to use it
    source: str  # the paper or library it follows
    # For the checks that run the layer ``normlab.nn.<layer>(*args)`` on an input of shape
    # ``example``: the axes of the output, viewed as ``view`` if given, over which it has
    # mean 0 (when ``center``) and mean square 1 in training mode (None: nothing to
    # check), and whether its inference output for one sample depends on the others.
    args: tuple = ()
    example: tuple[int, ...] | None = None
    axes: tuple[int, ...] | None = None
    view: tuple[int, ...] | None = None
    center: bool = True
    inference_uses_batch: bool = False


BN = "`y = gamma * (x - mean) / sqrt(var + eps) + beta`"

ENTRIES = [
    Entry(
        "BatchNorm1d",
        BN,
        "per channel C, over N (and L)",
        "running mean and variance (an affine map per channel)",
        "MLPs and 1-D convolutions trained with batches of more than a few samples",
        "Ioffe & Szegedy 2015",
        args=(3,),
        example=(16, 3, 5),
        axes=(0, 2),
    ),
    Entry(
        "BatchNorm2d",
        BN,
        "per channel C, over N, H, W",
        "running mean and variance (an affine map per channel)",
        "convolutional networks trained with batches of more than a few samples",
        "Ioffe & Szegedy 2015",
        args=(3,),
        example=(8, 3, 4, 4),
        axes=(0, 2, 3),
    ),
    Entry(
        "BatchNorm3d",
        BN,
        "per channel C, over N, D, H, W",
        "running mean and variance (an affine map per channel)",
        "3-D convolutional networks (video, volumes)",
        "Ioffe & Szegedy 2015",
        args=(3,),
        example=(4, 3, 2, 3, 3),
        axes=(0, 2, 3, 4),
    ),
    Entry(
        "BatchNormAct",
        "`y = act(gamma * (x - mean) / sqrt(var + eps) + beta [+ residual])`; with `inplace_abn=True` "
        "gamma is `|weight| + eps`",
        "per channel C, over N and every spatial axis",
        "running mean and variance (an affine map per channel), then the activation",
        "batch norm followed by an activation (and a residual add): one kernel each way on a GPU; "
        "`inplace_abn=True` keeps only the output for backward, to save activation memory",
        "timm `norm_act`; Rota Bulo et al. 2018 (in-place activated BN)",
        args=(3, "identity"),
        example=(8, 3, 4, 4),
        axes=(0, 2, 3),
    ),
]


def render() -> str:
    """The Markdown page listing every entry."""
    lines = [
        "# Normalizations",
        "",
        "<!-- Written by `python -m normlab.nn.catalog > docs/normalizations.md`; do not edit by hand. -->",
        "",
        "Every normalization layer in `normlab.nn`: what it computes, over which axes, what it",
        "keeps for inference and when to use it. A test runs each layer to check the axes and",
        "the inference behaviour stated here.",
        "",
        "| layer | statistics over | at inference | when to use | source |",
        "|---|---|---|---|---|",
        *(f"| `{e.layer}` | {e.statistics} | {e.inference} | {e.when} | {e.source} |" for e in ENTRIES),
        "",
    ]
    for e in ENTRIES:
        lines += [f"## {e.layer}", "", e.formula, "", f"- statistics: {e.statistics}",
                  f"- at inference: {e.inference}", f"- when to use: {e.when}", f"- source: {e.source}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
