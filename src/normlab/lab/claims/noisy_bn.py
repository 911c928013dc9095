"""noisy-bn: batch norm helps even with covariate shift put back; what it does is smooth the landscape.

Santurkar, Tsipras, Ilyas & Madry 2018, "How Does Batch Normalization Help
Optimization?": (Sec. 2.1, Fig. 2) a VGG network with noise after every batch norm,
noise of non-zero mean and non-unit variance whose distribution changes at every step,
trains about as well as with plain batch norm, although its layers' input
distributions are far less stable, and better than without batch norm; (Sec. 2.2)
measured by their gradient-based Definition 2.1, batch norm does not even reduce
internal covariate shift; (Sec. 3.1, Fig. 4) what it does is make the loss landscape
smoother: along the gradient the loss varies less, the gradient stays more predictive,
and the "effective beta-smoothness" is lower. Their Fig. 4 measures it at a training
step as "the maximum difference (in l2-norm) in gradient over distance moved in that
direction", moving along the gradient.

Here: a 4x100 ReLU MLP on MNIST-1D, SGD at learning rate 0.1, batch 60, four variants:
BN, noisy BN (BN followed by :class:`~normlab.lab.models.ShiftingNoise`), no BN, and no
BN with the same noise after each linear map. At every log: internal covariate shift
(measure ``ics``), the landscape along the gradient (``smoothness``: steps of
1/sqrt(2), 1 and sqrt(2) times the one SGD takes, so that the landscape measured is the
one training moves through), and the inputs to the last ReLUs (probe
``last_activation_input``, whose drift stable-distributions uses).

The effective beta is judged twice: as Santurkar et al. measure it, in parameter
space, and in a scale-invariant form, each layer's weight measured in units of its
norm (``beta_relative`` of :func:`normlab.lab.measures.smoothness`; for one layer
``beta * ||W||^2``). Batch norm makes the loss invariant to the scale of the weights
before it, so a BN network whose weights grew during training has a smaller raw beta
on the same landscape: the raw figure alone cannot tell smoothness from weight growth.
The landscape figures are compared as ratios (in log10), no BN over BN: they span
orders of magnitude across networks, and a ratio needs no pilot to say what is small.
"""

from __future__ import annotations

import numpy as np

from ..measures import ETA_MULTIPLES
from ..models import ModelSpec
from ..train import RunConfig
from .. import stats
from . import base
from .base import Claim, Profile, Run
from .stable_distributions import drift

VARIANTS = {  # label -> (norm, noise)
    "BN": ("bn", False),
    "noisy BN": ("bn", True),
    "no BN": ("none", False),
    "no BN + noise": ("none", True),
}
CLOSE = 0.05  # noisy BN "performs close to BN": its test accuracy at most 5 points below
SMALLEST_ACCURACY = 0.01  # smallest effect of interest: one percentage point of accuracy
SMOOTHER = 1.25  # smallest effect of interest of the landscape: no BN's figure 1.25 times BN's
LANDSCAPE = ("loss range", "gradient change", "beta", "beta relative")  # the figures of landscape(), as judged


def runs(profile: Profile) -> list[RunConfig]:
    return [
        RunConfig(
            ModelSpec("mlp", depth=4, width=100, activation="relu", norm=norm, noise=noise),
            data=profile.data,
            optimizer="sgd",
            lr=0.1,
            batch_size=60,
            steps=profile.pick(60, 2000, 6000),
            eval_every=profile.pick(20, 200, 500),
            seed=seed,
            probes=("last_activation_input",),
            measures=("ics", "smoothness"),
        )
        for norm, noise in VARIANTS.values()
        for seed in profile.seeds
    ]


def _label(config: RunConfig) -> str:
    return next(k for k, v in VARIANTS.items() if v == (config.model.norm, config.model.noise))


def landscape(value: dict) -> dict:
    """One log's smoothness figures: the range of the loss over the steps (and at ``w``), the
    largest gradient change, the effective beta (largest ratio), raw and relative; None where
    nothing was finite."""
    losses = [x for x in [value["loss"], *value["loss_along"]] if x is not None]

    def largest(key):
        finite = [x for x in value[key] if x is not None]
        return max(finite) if finite else None

    return {
        "loss range": max(losses) - min(losses) if losses else None,
        "gradient change": largest("gradient_change"),
        "beta": largest("beta"),
        "beta relative": largest("beta_relative"),
    }


def curves(run: Run) -> dict[str, tuple[list, list]]:
    """Per logged step: ICS (l2 and cos, means over layers), the three landscape figures and the gradient's norm."""
    ics = run.result["measures"]["ics"]
    smooth = run.result["measures"]["smoothness"]
    out = {
        "ICS l2": (ics["step"], [float(np.mean(v["l2"])) for v in ics["value"]]),
        "ICS cos": (ics["step"], [float(np.mean(v["cos"])) for v in ics["value"]]),
    }
    per_log = [landscape(v) for v in smooth["value"]]
    for key in LANDSCAPE:
        out[key] = (smooth["step"], [f[key] for f in per_log])
    out["gradient norm"] = (smooth["step"], [v["gradient_norm"] for v in smooth["value"]])
    return out


def _mean_after_start(steps, values) -> float:
    """The mean over the logs after step 0: what training goes through, not the network at initialization."""
    kept = [v for s, v in zip(steps, values) if s > 0 and v is not None]
    return float(np.mean(kept)) if kept else float("nan")


def _beta_at(run: Run, i: int, key: str = "beta") -> float:
    """The run's ratio ``||g(w) - g(w - eta g)|| / ||eta g||`` (``key="beta_relative"``: in the layers'
    units) at the ``i``-th step size, averaged over the logs after step 0."""
    smooth = run.result["measures"]["smoothness"]
    return _mean_after_start(smooth["step"], [v[key][i] for v in smooth["value"]])


def _log10(x: float) -> float:
    return float(np.log10(x)) if x > 0 else float("nan")


def summarize(runs: list[Run]) -> dict:
    by = base.group(runs, _label)
    figures: dict = {}
    for label, rs in by.items():
        figures[f"final test accuracy, {label}"] = stats.stat([r.result["final_test_accuracy"] for r in rs], base.resolution(runs))
    for label, rs in by.items():
        figures[f"final training loss, {label}"] = stats.stat([r.result["train_loss"][-1] for r in rs])
    for label, rs in by.items():
        figures[f"drift of the last layer's input, {label}"] = stats.stat([drift(r) for r in rs])
    for key in ("ICS l2", "ICS cos", *LANDSCAPE, "gradient norm"):
        for label, rs in by.items():
            figures[f"{key}, {label}"] = stats.stat([_mean_after_start(*curves(r)[key]) for r in rs])
    for key in LANDSCAPE:  # what the verdict compares: ratios, as differences of log10
        for label in by:
            figures[f"log10 {key}, {label}"] = stats.stat([_log10(v) for v in figures[f"{key}, {label}"]["values"]])
    for label, rs in by.items():  # beta is a maximum over the steps: where the maximum lies matters
        for key, name in (("beta", "beta"), ("beta_relative", "beta relative")):
            figures[f"{name} by step size (x learning rate), {label}"] = {
                f"{m:.3g}": stats.stat([_beta_at(r, i, key) for r in rs]) for i, m in enumerate(ETA_MULTIPLES)
            }
    figures["non-finite losses along the gradient (all runs)"] = sum(
        v is None for r in runs for log in r.result["measures"]["smoothness"]["value"] for v in log["loss_along"]
    )
    return figures


def parts(figures: dict):
    landscape = {
        "loss range": "loss range along the gradient",
        "gradient change": "gradient change along the gradient",
        "beta": "effective beta-smoothness",
        "beta relative": "effective beta-smoothness, scale-invariant (weights in units of their norms)",
    }
    return [
        stats.compare(
            figures["final test accuracy, noisy BN"],
            figures["final test accuracy, BN"],
            threshold=-CLOSE,
            smallest=SMALLEST_ACCURACY,
            what="test accuracy of noisy BN minus BN",
        ),
        stats.compare(
            figures["final test accuracy, noisy BN"],
            figures["final test accuracy, no BN"],
            smallest=SMALLEST_ACCURACY,
            what="test accuracy of noisy BN minus no BN",
        ),
        *(
            stats.compare(
                figures[f"log10 {key}, no BN"],
                figures[f"log10 {key}, BN"],
                smallest=float(np.log10(SMOOTHER)),
                what=f"{what}: log10 of no BN's over BN's",
                unit="decades",
            )
            for key, what in landscape.items()
        ),
    ]


def plot(runs: list[Run], figures: dict):
    from .. import plots

    panels = ("test accuracy", "ICS l2", *LANDSCAPE)
    titles = {
        "ICS l2": "ICS: ||G - G'|| (mean over layers)",
        "loss range": "loss range along the gradient",
        "gradient change": "max ||g(w) - g(w - eta g)||",
        "beta": "effective beta-smoothness",
        "beta relative": "beta, weights in units of their norms",
    }
    # two rows: what trains (accuracy, ICS), then the landscape; the sixth place holds the legend
    fig, axes = plots.figure(3, title="noisy-bn: 4x100 ReLU MLP, SGD 0.1 (mean ± std over seeds)", width=4.4, height=3.4, nrows=2)
    for label, rs in base.group(runs, _label).items():
        style = {"linestyle": "--"} if "noise" in label else {}
        plots.band(axes[0], rs[0].result["step"], [r.result["test_accuracy"] for r in rs], label, **style)
        for ax, key in zip(axes[1:], panels[1:]):
            steps = curves(rs[0])[key][0]
            plots.band(ax, steps, [curves(r)[key][1] for r in rs], label, **style)
    for ax, key in zip(axes, panels):
        ax.set(xlabel="training step", ylabel=key, title=titles.get(key, key))
        if key in ("gradient change", "beta", "beta relative"):
            ax.set_yscale("log")
    axes[5].axis("off")
    axes[5].legend(*axes[0].get_legend_handles_labels(), loc="center", frameon=False)
    return fig


CLAIM = Claim(
    name="noisy-bn",
    headline="Noisy BN trains about as well as BN: BN's benefit is a smoother landscape, not stable distributions",
    source="Santurkar, Tsipras, Ilyas & Madry 2018, Sec. 2-3, Figs. 2-4",
    statement=(
        "A network with noise of changing mean and variance injected after every BN (more covariate shift) "
        "trains about as well as with plain BN and better than without BN; BN's benefit is a smoother loss "
        "landscape (less loss variation and more predictive gradients along the gradient, lower beta-smoothness)."
    ),
    measured=(
        "4x100 ReLU MLP, SGD 0.1: final test accuracy of BN, noisy BN, no BN, no BN + noise; at every log, ICS "
        "(Def. 2.1: ||G_i - G'_i||, cos) and, along the gradient for steps of 1/sqrt(2), 1 and sqrt(2) times the one "
        "SGD takes, the loss range, the largest gradient change and the effective beta, raw and with each layer's "
        "weight in units of its norm (means over the logs after step 0)"
    ),
    criterion=(
        f"all: (a) noisy BN's test accuracy is at most {CLOSE:.0%} (absolute) below BN's and above no BN's; (b) with "
        "BN the loss range, the gradient change and the effective beta, raw and scale-invariant, are each smaller "
        f"than without BN; smallest effects of interest: {SMALLEST_ACCURACY * 100:g} point of accuracy, and no BN's "
        f"landscape figure {SMOOTHER:g} times BN's"
    ),
    runs=runs,
    summarize=summarize,
    parts=parts,
    plot=plot,
)
