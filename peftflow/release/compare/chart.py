"""The comparison's PNG: both sides' per-step training loss on one axis (matplotlib, Agg).

`figure()` builds the chart and `render()` saves it atomically, so tests can read the legend
off the figure instead of decoding a PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from peftflow.store import atomic
from peftflow.train.plots import moving_mean

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = ("#1f5fa8", "#d17a00")  # A, B: the same on every chart
WIDTH_IN, HEIGHT_IN, DPI = 8.0, 4.5, 100  # an 800 x 450 PNG


def figure(curves: Sequence[tuple[str, Sequence[float]]], title: str) -> Figure:
    """One line per (legend label, per-step losses); a side without losses is named as such."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    missing = []
    for (label, losses), color, style in zip(curves, COLORS, ("-", "--"), strict=False):
        if not losses:
            missing.append(label)
            continue
        steps = range(1, len(losses) + 1)
        window, means = moving_mean(losses)
        # Per-step loss faint, its running mean bold: two noisy curves would hide each other.
        ax.plot(steps, losses, color=color, lw=0.8, alpha=0.35 if means else 1.0,
                label=f"{label}: loss per step ({len(losses)} steps)")
        if means:
            # B dashed: where the curves coincide (the same run twice) both stay visible
            ax.plot(range(window, len(losses) + 1), means, color=color, lw=1.8, ls=style,
                    label=f"{label}: mean of {window} steps")
    if missing:
        ax.text(0.99, 0.98, "no loss data: " + ", ".join(missing), transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="dimgrey")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(missing) < len(curves):
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def render(path: str | Path, curves: Sequence[tuple[str, Sequence[float]]], title: str) -> Path:
    """Write the chart as a PNG atomically; the absolute path it was written to."""
    fig = figure(curves, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic.write_bytes(path, buffer.getvalue())  # built without pyplot: nothing to close
    return Path(path).resolve()
