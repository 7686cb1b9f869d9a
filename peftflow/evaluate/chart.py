"""eval_chart.png: base vs adapted loss per suite, with the relative change and its CI."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from peftflow import atomic


def render(
    path: str | Path,
    names: Sequence[str],
    kinds: Sequence[str],
    base: Sequence[float],
    adapted: Sequence[float],
    changes: Sequence[float],
    title: str,
) -> Path:
    """Write a grouped bar chart (matplotlib, Agg backend) atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; must precede pyplot
    import matplotlib.pyplot as plt

    width = 0.38
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.9 * len(names) + 1.5), 4.2), dpi=110)
    try:
        bars_b = ax.bar([x - width / 2 for x in xs], base, width, label="base", color="#8c8c8c")
        bars_a = ax.bar([x + width / 2 for x in xs], adapted, width, label="adapted",
                        color="#2a7ab9")
        for bar_b, bar_a, change in zip(bars_b, bars_a, changes, strict=True):
            top = max(bar_b.get_height(), bar_a.get_height())
            ax.annotate(f"{change:+.2%}", (bar_a.get_x(), top), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=9)
        ax.set_xticks(list(xs), [f"{n}\n({k})" for n, k in zip(names, kinds, strict=True)],
                      fontsize=9)
        ax.set_ylabel("mean per-token loss (nats)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, max([*base, *adapted, 1e-9]) * 1.18)
        ax.legend(loc="lower right", fontsize=9)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
    return Path(path).resolve()
