"""Plot helpers for the claims' figures: matplotlib's Agg backend, no display needed.

Claims draw their own figure with these few helpers, so every plot in the report
looks alike: curves are the mean over seeds with a band of +- one standard deviation;
each normalization has one colour in every figure (:data:`COLORS`, found from a
curve's label by :func:`color`), so that "BN" is the same blue everywhere and what else
varies (activation, batch size, dropout) is told by line style or marker; legends
stand outside the data (:func:`legend`); figures are written at :data:`DPI`.
"""

from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["figure", "band", "png", "color", "legend", "COLORS", "DPI"]

DPI = 220  # twice the screen's 110: sharp on high-density displays and in print

# One colour per normalization (Okabe & Ito's colour-blind-safe palette, and greys for none).
COLORS = {
    "none": "#222222",
    "none + noise": "#999999",
    "bn": "#0072B2",
    "noisy bn": "#56B4E9",
    "ghost bn": "#009E73",
    "renorm": "#CC79A7",
    "bn per step": "#332288",
    "gn": "#E69F00",
    "ln": "#D55E00",
}

# label patterns -> the normalization they name, the first match wins (order matters:
# "no BN + noise" before "noisy", "ghost BN" before "BN")
_NAMES = [
    (r"\bno bn\b.*\bnoise\b", "none + noise"),
    (r"\bnoisy\b", "noisy bn"),
    (r"\bno bn\b|\bno normalization\b|\bwithout bn\b|\bnothing\b|\bnone\b|^dropout", "none"),
    (r"\bghost\b", "ghost bn"),
    (r"\brenorm\b", "renorm"),
    (r"\bper step\b", "bn per step"),
    (r"\bgn\b|group ?norm", "gn"),
    (r"\bln\b|layer ?norm", "ln"),
    (r"\bbn\b|batch ?norm", "bn"),
]


def color(label: str) -> str | None:
    """The colour of the normalization a curve's ``label`` names ("BN", "no BN", "GN",
    "LayerNorm", "ghost BN", "sigmoid, BN", ...), or None when it names none."""
    text = label.lower()
    for pattern, name in _NAMES:
        if re.search(pattern, text):
            return COLORS[name]
    return None


def figure(ncols: int = 1, title: str = "", width: float = 5.0, height: float = 3.6, nrows: int = 1):
    """A new figure with ``nrows x ncols`` axes: ``(fig, [ax, ...])``, row by row."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, [ax for row in axes for ax in row]


def band(ax, x, curves, label: str, **style):
    """Plot the mean of ``curves`` (one list per seed, ragged ends allowed) against ``x``, with a +-std band,
    in the colour of the normalization ``label`` names unless ``style`` gives one."""
    n = min(len(c) for c in curves)
    y = np.array([[np.nan if v is None else v for v in c[:n]] for c in curves], dtype=float)
    x = np.asarray(x[:n], dtype=float)
    mean = np.nanmean(y, 0)
    std = np.nanstd(y, 0, ddof=1) if len(y) > 1 else np.zeros_like(mean)
    if "color" not in style and color(label):
        style["color"] = color(label)
    (line,) = ax.plot(x, mean, label=label, **style)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def legend(ax, *args, **kwargs):
    """The legend of ``ax`` outside its data, to the right of the axes (``args`` as ``ax.legend``'s)."""
    kwargs = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, "fontsize": "small", "frameon": False, **kwargs}
    return ax.legend(*args, **kwargs)


def png(fig) -> bytes:
    """The figure as PNG bytes at :data:`DPI`, legends outside the axes included; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
