"""loss_curve.png from loss_data.jsonl (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from peftflow import atomic


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


def loss_curve(records: list[dict[str, Any]], out: str | Path, title: str,
               steps_per_epoch: int) -> Path:
    """Per-step loss, its moving average, epoch boundaries and resume points."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    losses = [float(r["loss"]) for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="loss per step")
    window = max(1, min(20, len(losses) // 10))
    if len(losses) >= window > 1:
        avg = [sum(losses[i - window:i]) / window for i in range(window, len(losses) + 1)]
        ax.plot(range(window, len(losses) + 1), avg, lw=1.6, label=f"mean of {window} steps")
    for boundary in range(steps_per_epoch, len(losses), max(1, steps_per_epoch)):
        ax.axvline(boundary + 0.5, color="grey", lw=0.5, ls=":")
    for i, record in enumerate(records):
        if "resumed_from_epoch" in record:
            ax.axvline(i + 0.5, color="red", lw=1.0, ls="--")
            ax.annotate(f"resumed after epoch {record['resumed_from_epoch']}", (i + 1, max(losses)),
                        color="red", fontsize=8, va="top")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic.write_bytes(out, buffer.getvalue())
    return Path(out)
