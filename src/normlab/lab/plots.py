"""Plot helpers for the claims' figures: matplotlib's Agg backend, no display needed.

Claims draw their own figure with these few helpers, so every plot in the report
looks alike: curves are the mean over seeds with a band of +- one standard deviation.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["figure", "band", "png"]


def figure(ncols: int = 1, title: str = "", width: float = 5.0, height: float = 3.6):
    """A new figure with ``ncols`` axes side by side: ``(fig, [ax, ...])``."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, list(axes[0])


def band(ax, x, curves, label: str, **style):
    """Plot the mean of ``curves`` (one list per seed, ragged ends allowed) against ``x``, with a +-std band."""
    n = min(len(c) for c in curves)
    y = np.array([[np.nan if v is None else v for v in c[:n]] for c in curves], dtype=float)
    x = np.asarray(x[:n], dtype=float)
    mean = np.nanmean(y, 0)
    std = np.nanstd(y, 0, ddof=1) if len(y) > 1 else np.zeros_like(mean)
    (line,) = ax.plot(x, mean, label=label, **style)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
