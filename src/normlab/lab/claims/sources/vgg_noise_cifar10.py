"""vgg-noise-cifar10: Santurkar et al.'s VGG with BN, noisy BN and none on CIFAR-10, as retold.

Shipra Saxena, "Introduction to Batch Normalization" (Analytics Vidhya, 2021), citing
Santurkar, Tsipras, Ilyas & Madry 2018 ("How Does Batch Normalization Help
Optimization?", Sec. 2.1 and Fig. 2): "they trained three models. Model-1: standard
VGG network without batch normalization. Model-2: Standard VGG network with batch
normalization. Model-3: Standard VGG with batch normalization and random noise. This
random noise has non-zero mean and non-unit variance and added after the batch
normalization layer." Two conclusions: "The third model has a less stable
distribution across all layers", and "the training accuracy of the second and third
models is higher than the first model".

Here: VGG-11 (Simonyan & Zisserman's configuration A: 64, M, 128, M, 256 x2, M, 512
x2, M, 512 x2, M, then one linear classifier, the VGG CIFAR-10 networks use) with BN
after every convolution, with BN followed by :class:`~normlab.lab.models.ShiftingNoise`
("noisy" BN), and without BN, on a local CIFAR-10 folder, torch's initialization
(Santurkar et al. trained in PyTorch), standardized per channel. Where the sources are
silent ("standard VGG"; optimizer, batch, budget, augmentation, noise magnitude), the
choices: VGG-11; SGD at learning rate 0.1 without momentum or weight decay (the rate
of Santurkar et al.'s Fig. 2), batch 128, 15000 steps (their plots' horizontal axis),
no augmentation, the lab's noise of noisy-bn. The probe ``activation_inputs`` records,
every 500 steps, the 15th, 50th and 85th percentiles of the first channel of every
activation's input (after BN and noise) on a fixed batch of test images, as training
sees it; the *drift* of a layer is the range those percentiles sweep over training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ... import data as datasets
from ... import stats
from ...models import ACTIVATIONS, ModelSpec
from ...train import RunConfig, _as_in_training, probe
from .. import base
from ..base import Claim, Profile, Run

VARIANTS = {"no BN": ("none", False), "BN": ("bn", False), "noisy BN": ("bn", True)}  # label -> (norm, noise)
COLORS = {"no BN": "C1", "BN": "C0", "noisy BN": "C2"}  # one colour per normalization
LESS_STABLE = 0.25  # smallest effect of interest of the drift (in the activation input's units: about its std after BN)
HIGHER = 0.02  # smallest effect of interest of the training accuracy
PERCENTILES = (0.15, 0.5, 0.85)


def network(norm: str, noise: bool) -> ModelSpec:
    return ModelSpec(
        "cnn", depth=5, width=(64, 128, 256, 512, 512), convs=(1, 1, 2, 2, 2), pool_last=True,
        activation="relu", norm=norm, noise=noise,
    )


def runs(profile: Profile) -> list[RunConfig]:
    folder = datasets.find(profile.data, "cifar-10")
    return [
        RunConfig(
            network(norm, noise),
            data=folder,
            optimizer="sgd",
            lr=0.1,
            batch_size=profile.as_written(128, 4),
            steps=profile.as_written(15000, 2),
            eval_every=profile.as_written(500, 1),
            seed=seed,
            probes=("activation_inputs",),
            probe_size=profile.as_written(500, 8),
            measures=("heldout",),
        )
        for norm, noise in VARIANTS.values()
        for seed in profile.seeds
    ]


@probe("activation_inputs")
def activation_inputs(model: nn.Module, spec: ModelSpec, x: torch.Tensor) -> list[list[float]]:
    """The 15th, 50th and 85th percentiles of the first channel of every activation's input,
    over the probe batch and every position, as training sees it (batch statistics, noise on;
    buffers and the RNG restored): one ``[p15, p50, p85]`` per hidden layer, in forward order."""
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS[spec.activation])]
    seen = []
    handles = [a.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach())) for a in acts]
    try:
        with _as_in_training(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    q = torch.tensor(PERCENTILES, dtype=torch.float64)
    return [torch.quantile(v[:, 0].double().flatten(), q).tolist() for v in seen]


def drifts(run: Run) -> list[float]:
    """Per layer, the range each percentile sweeps over the logged steps, averaged over the three percentiles."""
    p = np.asarray(run.result["probes"]["activation_inputs"], dtype=float)  # (logged step, layer, percentile)
    return (p.max(0) - p.min(0)).mean(1).tolist()


def _label(config: RunConfig) -> str:
    return next(k for k, v in VARIANTS.items() if v == (config.model.norm, config.model.noise))


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, _label)
    figures: dict = {}
    for label, rs in by.items():
        figures[f"final training accuracy (eval mode), {label}"] = stats.stat([r.result["final_train_accuracy"] for r in rs])
    for label, rs in by.items():
        figures[f"final test accuracy, {label}"] = stats.stat([r.result["final_test_accuracy"] for r in rs])
    for label, rs in by.items():
        figures[f"drift of the layers' inputs (mean over layers), {label}"] = stats.stat([float(np.mean(drifts(r))) for r in rs])
    for label, rs in by.items():
        per_layer = np.mean([drifts(r) for r in rs], 0)
        figures[f"drift by layer (mean over seeds), {label}"] = [float(d) for d in per_layer]
    return figures


def parts(figures: dict) -> list[stats.Comparison]:
    return [
        stats.compare(
            figures["drift of the layers' inputs (mean over layers), noisy BN"],
            figures["drift of the layers' inputs (mean over layers), BN"],
            what="drift of the layers' inputs, noisy BN minus BN ('a less stable distribution')",
            smallest=LESS_STABLE,
        ),
        stats.compare(
            figures["final training accuracy (eval mode), BN"],
            figures["final training accuracy (eval mode), no BN"],
            what="training accuracy, BN minus no BN",
            smallest=HIGHER,
        ),
        stats.compare(
            figures["final training accuracy (eval mode), noisy BN"],
            figures["final training accuracy (eval mode), no BN"],
            what="training accuracy, noisy BN minus no BN",
            smallest=HIGHER,
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from ... import plots

    by = base.group(runs, _label)
    layers = len(runs[0].result["probes"]["activation_inputs"][0])
    shown = sorted({0, layers // 2, layers - 1})
    fig, axes = plots.figure(1 + len(shown), title="vgg-noise-cifar10: VGG-11 on CIFAR-10 (Santurkar et al.'s Fig. 2)", width=4.2)
    for label, rs in by.items():
        heldout = [r.result["measures"]["heldout"] for r in rs]
        plots.band(axes[0], heldout[0]["step"], [[v["val_accuracy"] for v in h["value"]] for h in heldout], label, color=COLORS[label])
        first = rs[0]  # seed 0's distributions, as the paper shows one run
        p = np.asarray(first.result["probes"]["activation_inputs"], dtype=float)
        for ax, layer in zip(axes[1:], shown):
            ax.plot(first.result["step"], p[:, layer, 1], color=COLORS[label], label=label)
            ax.fill_between(first.result["step"], p[:, layer, 0], p[:, layer, 2], color=COLORS[label], alpha=0.2, linewidth=0)
    axes[0].set(xlabel="training step", ylabel="validation accuracy", title="accuracy (mean ± std)")
    for ax, layer in zip(axes[1:], shown):
        ax.set(xlabel="training step", ylabel="input of channel 0 (15th-50th-85th)", title=f"layer {layer + 1} of {layers}, seed 0")
    axes[0].legend()
    return fig


CLAIM = Claim(
    name="vgg-noise-cifar10",
    source=(
        'Shipra Saxena, "Introduction to Batch Normalization" (Analytics Vidhya, 2021), retelling Santurkar, '
        "Tsipras, Ilyas & Madry 2018, Sec. 2.1, Fig. 2"
    ),
    statement=(
        "A standard VGG with BN followed by noise of non-zero mean and non-unit variance has less stable layer-input "
        "distributions than with BN alone, and both train to a higher training accuracy than the VGG without BN."
    ),
    measured=(
        "VGG-11 on CIFAR-10 without BN, with BN and with noisy BN (SGD 0.1, batch 128, 15000 steps): the drift of "
        "every layer's input distribution over training, and the final training accuracy"
    ),
    criterion=(
        "all three, Welch intervals over seeds: noisy BN's inputs drift more than BN's (smallest effect of interest "
        f"{LESS_STABLE}); BN's and noisy BN's training accuracies are each above no BN's (smallest effect {HIGHER:.0%})"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
