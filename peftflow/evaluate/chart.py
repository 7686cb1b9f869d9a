"""eval_chart.png: the change of loss per suite, its 95 % CI and the gate thresholds.

`figure()` builds the chart and `render()` saves it, so tests can inspect the axes (range,
error bars, threshold lines) without decoding a PNG. The evaluation stage renders it for a
candidate; the release stage renders its own copy, titled with the release version.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftflow.evaluate.verdict import Thresholds
from peftflow.store import atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PASS_COLOR, FAIL_COLOR, UNJUDGED_COLOR = "#2e8b57", "#c0392b", "#8c8c8c"
DOMAIN_GATE_COLOR, RETENTION_GATE_COLOR = "#1f5fa8", "#d17a00"
# Below this span (percentage points) noise of a few hundredths of a percent would fill the
# axis and look like an effect.
MIN_SPAN_PCT = 1.0
MARGIN = 0.15  # of the span, above and below: room for the value labels


@dataclass(frozen=True)
class SuiteChange:
    """One bar: a suite's relative change of loss (adapted/base - 1; negative = better)."""

    name: str
    kind: str  # SuiteKind value: domain | retention
    change: float
    ci95: tuple[float, float]
    passed: bool | None = None  # None: no gate rule judged this suite


def changes(metrics: Mapping[str, Any], verdict_doc: Mapping[str, Any]) -> list[SuiteChange]:
    """The bars of a metrics.json and its verdict.json, in the order the suites were scored."""
    outcomes: dict[str, list[bool]] = {}
    for rule in verdict_doc.get("rules", []):
        if rule.get("suite"):
            outcomes.setdefault(rule["suite"], []).append(rule["outcome"] == "pass")
    bars = []
    for name, suite in metrics["suites"].items():
        low, high = suite["ci95"]
        judged = outcomes.get(name)
        bars.append(SuiteChange(name, suite["kind"], float(suite["relative_change"]),
                                (float(low), float(high)),
                                None if judged is None else all(judged)))
    return bars


def thresholds_of(verdict_doc: Mapping[str, Any]) -> Thresholds:
    """The thresholds a verdict.json was judged with."""
    t = verdict_doc["thresholds"]
    return Thresholds(float(t["min_domain_improvement"]), float(t["max_retention_increase"]),
                      t.get("baseline_tolerance"))


@dataclass(frozen=True)
class GateLine:
    kind: str  # the suite kind the threshold applies to
    y: float  # percent, in the sign of the bars

    @property
    def label(self) -> str:
        return f"{self.kind} gate: change <= {self.y:+.1f} %"


def gate_lines(bars: Sequence[SuiteChange], thresholds: Thresholds) -> list[GateLine]:
    """The thresholds that apply to a suite on the chart, in the sign of the bars."""
    kinds = {b.kind for b in bars}
    limits = (("domain", -thresholds.min_domain_improvement),
              ("retention", thresholds.max_retention_increase))
    # + 0.0: a zero domain threshold negated is -0.0, which would print as "-0.0 %"
    return [GateLine(kind, limit * 100 + 0.0) for kind, limit in limits if kind in kinds]


def y_range(bars: Sequence[SuiteChange], thresholds: Thresholds) -> tuple[float, float]:
    """Axis limits in percent: zero, every change, CI end and threshold, with a margin."""
    values = [0.0, *(line.y for line in gate_lines(bars, thresholds))]
    for b in bars:
        values += [b.change * 100, b.ci95[0] * 100, b.ci95[1] * 100]
    finite = [v for v in values if math.isfinite(v)]
    low, high = min(finite), max(finite)
    widen = max(0.0, MIN_SPAN_PCT - (high - low)) / 2
    low, high = low - widen, high + widen
    span = high - low
    return low - MARGIN * span, high + MARGIN * span


def figure(bars: Sequence[SuiteChange], thresholds: Thresholds, title: str) -> Figure:
    """The chart as a matplotlib Figure on the Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(max(5.0, 1.6 * len(bars) + 3.0), 4.4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(bars)))
    pct = [b.change * 100 for b in bars]
    colors = [UNJUDGED_COLOR if b.passed is None else PASS_COLOR if b.passed else FAIL_COLOR
              for b in bars]
    ax.bar(xs, pct, 0.55, color=colors, zorder=2)
    # A bootstrap percentile interval need not contain the point estimate; clamp so matplotlib
    # gets non-negative lengths and the bar still shows where the interval lies.
    below = [max(0.0, p - b.ci95[0] * 100) for p, b in zip(pct, bars, strict=True)]
    above = [max(0.0, b.ci95[1] * 100 - p) for p, b in zip(pct, bars, strict=True)]
    ax.errorbar(xs, pct, yerr=[below, above], fmt="none", ecolor="black", elinewidth=1.0,
                capsize=5, zorder=3, label="95 % CI (bootstrap)")
    ax.axhline(0.0, color="black", lw=0.8, zorder=1)
    styles = {"domain": (DOMAIN_GATE_COLOR, "--"), "retention": (RETENTION_GATE_COLOR, "-.")}
    for line in gate_lines(bars, thresholds):
        color, style = styles[line.kind]
        ax.axhline(line.y, color=color, ls=style, lw=1.2, zorder=1, label=line.label)
    for x, p, b, low, high in zip(xs, pct, bars, below, above, strict=True):
        mark = "" if b.passed is None else " pass" if b.passed else " FAIL"
        end, offset = (p + high, 3) if p >= 0 else (p - low, -3)
        ax.annotate(f"{p:+.2f} %{mark}", (x, end), textcoords="offset points",
                    xytext=(0, offset), ha="center", va="bottom" if p >= 0 else "top",
                    fontsize=8)
    ax.set_xticks(xs, [f"{b.name}\n({b.kind})" for b in bars], fontsize=9)
    ax.set_xlim(-0.6, len(bars) - 0.4)
    ax.set_ylim(*y_range(bars, thresholds))
    ax.set_ylabel("change of mean per-token loss (%)\nadapted/base - 1; negative is better",
                  fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    handles, _ = ax.get_legend_handles_labels()
    judged = {b.passed for b in bars}
    handles += [Patch(color=color, label=f"suite {text} the gate")
                for state, color, text in ((True, PASS_COLOR, "passes"),
                                           (False, FAIL_COLOR, "fails")) if state in judged]
    ax.legend(handles=handles, loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def render(path: str | Path, bars: Sequence[SuiteChange], thresholds: Thresholds,
           title: str) -> Path:
    """Write the chart as a PNG atomically."""
    fig = figure(bars, thresholds, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    # Built without pyplot, so no figure registry holds it: dropping it frees it.
    atomic.write_bytes(path, buffer.getvalue())
    return Path(path).resolve()
