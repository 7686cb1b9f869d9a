"""loss_curve.png from loss_data.jsonl (matplotlib, Agg: no display needed).

`loss_figure()` builds the chart and `loss_curve()` saves it, so tests can read the epoch labels
off the figure instead of decoding a PNG.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftflow.store import atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def read_loss_data(path: str | Path) -> list[dict[str, Any]]:
    """Records of loss_data.jsonl; a torn last line (killed writer) is ignored."""
    records: list[dict[str, Any]] = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def epoch_starts(steps: int, steps_per_epoch: int) -> list[int]:
    """0-based index of the first step of each epoch that has at least one step.

    loss_data.jsonl has one record per optimizer step and no epoch field (RWKV-PEFT writes
    loss, t_cost and kt_s only), so epochs are cut every `steps_per_epoch` records.
    """
    return list(range(0, steps, max(1, steps_per_epoch)))


def moving_mean(losses: Sequence[float]) -> tuple[int, list[float]]:
    """(window, means): the mean of each `window` consecutive steps, the first one ending at
    step `window`; no means when there are too few steps to smooth (window 1)."""
    window = max(1, min(20, len(losses) // 10))
    if window == 1:
        return 1, []
    return window, [sum(losses[i - window:i]) / window for i in range(window, len(losses) + 1)]


def loss_figure(records: list[dict[str, Any]], title: str, steps_per_epoch: int) -> Figure:
    """Per-step loss, its moving average, labelled epoch boundaries and resume points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses = [float(r["loss"]) for r in records]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="loss per step")
    window, avg = moving_mean(losses)
    if avg:
        ax.plot(range(window, len(losses) + 1), avg, lw=1.6, label=f"mean of {window} steps")
    # x of step i (0-based) is i + 1, so an epoch starting at index s begins right of s + 0.5.
    # Labels count epochs from 1, as people do; the checkpoint files count from 0.
    for number, start in enumerate(epoch_starts(len(losses), steps_per_epoch), start=1):
        if start > 0:
            ax.axvline(start + 0.5, color="grey", lw=0.6, ls=":")
        ax.text(start + 0.5, 0.98, f" epoch {number}", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=8, color="dimgrey")
    for i, record in enumerate(records):
        if "resumed_from_epoch" in record:
            ax.axvline(i + 0.5, color="red", lw=1.0, ls="--")
            # resumed_from_epoch is the 0-based last finished epoch: shown 1-based like the labels
            ax.annotate(f"resumed after epoch {int(record['resumed_from_epoch']) + 1}",
                        (i + 1, 0.9), xycoords=ax.get_xaxis_transform(), color="red",
                        fontsize=8, va="top")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")  # the top edge carries the epoch labels
    fig.tight_layout()
    return fig


def loss_curve(records: list[dict[str, Any]], out: str | Path, title: str,
               steps_per_epoch: int) -> Path:
    """Write loss_curve.png atomically."""
    fig = loss_figure(records, title, steps_per_epoch)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic.write_bytes(out, buffer.getvalue())  # built without pyplot: nothing to close
    return Path(out)
