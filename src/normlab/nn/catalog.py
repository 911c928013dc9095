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
    # mean 0 (when ``center``) and mean square 1 (when ``scale``) in training mode (None:
    # nothing to check), and whether its inference output for one sample depends on the others.
    args: tuple = ()
    example: tuple[int, ...] | None = None
    axes: tuple[int, ...] | None = None
    view: tuple[int, ...] | None = None
    center: bool = True
    inference_uses_batch: bool = False
    scale: bool = True


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
        "LayerNorm",
        BN + ", statistics of each sample",
        "each sample over its trailing `normalized_shape` axes (e.g. the features of each token)",
        "the same as in training: nothing is kept",
        "transformers and RNNs; any batch size, including 1",
        "Ba, Kiros & Hinton 2016",
        args=((4, 5),),
        example=(2, 3, 4, 5),
        axes=(2, 3),
    ),
    Entry(
        "GroupNorm",
        BN + ", statistics of each group of C/G channels of each sample",
        "each sample, per group of C/G consecutive channels, over those channels and the spatial axes",
        "the same as in training: nothing is kept",
        "convolutional networks trained with small batches (detection, segmentation)",
        "Wu & He 2018",
        args=(2, 6),
        example=(4, 6, 3, 3),
        axes=(2, 3, 4),
        view=(4, 2, 3, 3, 3),
    ),
    *(
        Entry(
            f"InstanceNorm{d}d",
            BN + ", statistics of each channel of each sample",
            "each sample, per channel C, over " + ", ".join(spatial),
            "the same as in training by default; with `track_running_stats=True`, running "
            "mean and variance (an affine map per channel)",
            "style transfer and image generation: removes each image's own contrast",
            "Ulyanov, Vedaldi & Lempitsky 2016",
            args=(3,),
            example=(4, 3, *shape),
            axes=tuple(range(2, 2 + d)),
        )
        for d, spatial, shape in ((1, ["L"], (6,)), (2, ["H", "W"], (4, 4)), (3, ["D", "H", "W"], (2, 3, 3)))
    ),
    Entry(
        "RMSNorm",
        "`y = gamma * x / sqrt(mean(x^2) + eps)`, no centering, no bias",
        "each sample over its trailing `normalized_shape` axes (root mean square only)",
        "the same as in training: nothing is kept",
        "large language models: layer norm's effect at lower cost",
        "Zhang & Sennrich 2019",
        args=((4, 5),),
        example=(2, 3, 4, 5),
        axes=(2, 3),
        center=False,
    ),
    Entry(
        "WeightNorm",
        "`w = g * v / ||v||`: a reparameterization of a layer's weight, not of its activations",
        "none from the data: the norm of v per output unit, over the weight's other axes",
        "the reparameterized weight, the same as in training (no statistics)",
        "when batch statistics are unwanted (RL, generative models, noise-sensitive tasks); "
        "apply with `normlab.nn.weight_norm(layer)`, initialize with `data_dependent_init`",
        "Salimans & Kingma 2016",
        # a parametrization of weights, so there are no activation statistics to check
    ),
    Entry(
        "MeanOnlyBatchNorm",
        "`y = x - mean + beta`: batch norm without the division, the scale left to weight norm's g",
        "per channel C, over N and the spatial axes (mean only)",
        "running mean (a shift per channel)",
        "after a weight-normalized layer, as the paper pairs them",
        "Salimans & Kingma 2016, section 4",
        args=(3,),
        example=(8, 3, 4, 4),
        axes=(0, 2, 3),
        scale=False,
    ),
]

RENORM = (
    "`y = gamma * (x_hat * r + d) + beta`, x_hat as batch norm's, `r = clip(sigma_B / sigma, 1/rmax, rmax)`, "
    "`d = clip((mean_B - mean) / sigma, -dmax, dmax)` constants in backward; `sigma_B = sqrt(var_B + eps)`, "
    "`sigma = sqrt(running_var + eps)`, running statistics before the update"
)
RENORM_WHEN = (
    "small or non-i.i.d. batches, where batch norm's training and inference outputs diverge; "
    "plain batch norm for `warmup_steps`, then rmax, dmax relax linearly"
)
ENTRIES += [
    Entry(
        "BatchRenorm1d",
        RENORM,
        "per channel C, over N (and L); r, d against the running statistics",
        "running mean and variance (an affine map per channel), as batch norm",
        RENORM_WHEN,
        "Ioffe 2017",
        args=(3,),
        example=(16, 3, 5),
        axes=(0, 2),
    ),
    Entry(
        "BatchRenorm2d",
        RENORM,
        "per channel C, over N, H, W; r, d against the running statistics",
        "running mean and variance (an affine map per channel), as batch norm",
        RENORM_WHEN,
        "Ioffe 2017",
        args=(3,),
        example=(8, 3, 4, 4),
        axes=(0, 2, 3),
    ),
    Entry(
        "BatchRenorm3d",
        RENORM,
        "per channel C, over N, D, H, W; r, d against the running statistics",
        "running mean and variance (an affine map per channel), as batch norm",
        RENORM_WHEN,
        "Ioffe 2017",
        args=(3,),
        example=(4, 3, 2, 3, 3),
        axes=(0, 2, 3, 4),
    ),
    Entry(
        "GhostBatchNorm",
        "`y_k = gamma * (x_k - mean_k) / sqrt(var_k + eps) + beta` for each virtual batch `x_k` of "
        "`virtual_batch_size` samples (default 32; the last may be smaller); running statistics updated per virtual batch",
        "per channel C, over each virtual batch of N (and the axes after C)",
        "running mean and variance (an affine map per channel), as batch norm",
        "large-batch training: keeps the statistics noise of small batches, which narrows the generalization gap",
        "Hoffer, Hubara & Soudry 2017",
        args=(3,),
        example=(64, 3, 2),
        view=(2, 32, 3, 2),
        axes=(1, 3),
    ),
    Entry(
        "FrozenBatchNorm",
        "`y = weight * (x - running_mean) / sqrt(running_var + eps) + bias`, all four fixed buffers",
        "none: fixed statistics (loaded, or frozen from a batch norm by `freeze_batchnorm`)",
        "the same fixed affine map per channel, in training too",
        "fine-tuning with batches too small for batch statistics (detection backbones)",
        "torchvision's FrozenBatchNorm2d",
        args=(3,),
        example=(4, 3, 2, 2),
    ),
    Entry(
        "SyncBatchNorm",
        BN,
        "per channel C, over N and the axes after C of the batches of every rank in the process group",
        "running mean and variance (an affine map per channel), no communication",
        "data-parallel training with few samples per device (detection, segmentation)",
        "Peng et al. 2018 (MegDet); torch.nn.SyncBatchNorm",
        args=(3,),
        example=(8, 3, 4, 4),
        axes=(0, 2, 3),
    ),
    Entry(
        "SyncBatchRenorm",
        RENORM,
        "per channel C, over N and the axes after C of the batches of every rank; r, d against the running statistics",
        "running mean and variance (an affine map per channel), no communication",
        "batch renormalization in data-parallel training",
        "Ioffe 2017; Peng et al. 2018",
        args=(3,),
        example=(8, 3, 4, 4),
        axes=(0, 2, 3),
    ),
    Entry(
        "BatchNormAct",
        "`y = act(gamma * (x - mean) / sqrt(var + eps) + beta [+ residual])`; with `inplace_abn=True` "
        "gamma is `|weight| + eps`",
        "per channel C, over N and every spatial axis",
        "running mean and variance (an affine map per channel), then the activation",
        "batch norm followed by an activation (and a residual add): one kernel each way on a GPU with the triton backend; "
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
