"""report.md of a release, rendered with Jinja2 from templates/report.md.j2.

One sign convention throughout: change = adapted/base - 1 of the mean per-token loss, negative
is better. verdict.json states the domain rule as an improvement (-change >= threshold); the
report turns it around so the gate table reads in the same sign as the metrics table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT = "report.md"
TEMPLATES = Path(__file__).resolve().parent / "templates"
EVAL_RULE_CHECK = "eval_rule:"  # prefix of the gate's checks that restate a verdict rule


def _cell(value: Any) -> str:
    """A Markdown table cell: numbers rounded, pipes and newlines made harmless."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _pct(value: Any) -> str:
    return f"{value * 100:+.2f} %" if isinstance(value, int | float) else "-"


@dataclass(frozen=True)
class GateRow:
    """One evaluation rule, phrased in the report's sign convention."""

    rule: str
    suite: str | None
    measured: str
    required: str
    outcome: str


def _numeric(name: str, value: float, threshold: float) -> tuple[str, str] | None:
    """(measured, required) of a rule with numbers, in the report's sign; None if unknown."""
    if name == "min_domain_improvement":
        # + 0.0 turns -0.0 (a zero threshold negated) into 0.0, which prints without a sign
        return _pct(-value + 0.0), f"change <= {_pct(-threshold + 0.0)}"
    if name == "max_retention_increase":
        return _pct(value), f"change <= {_pct(threshold)}"
    if name == "no_regression_vs_release":
        # a loss, not a change: the limit is the released adapter's loss plus the tolerance
        return (f"adapted loss {_cell(value)}",
                f"adapted loss <= {_cell(threshold)} (released, plus tolerance)")
    if name == "suite_coverage":
        return f"{value:g} suites", f">= {threshold:g}"
    return None


def gate_row(rule: Mapping[str, Any]) -> GateRow:
    """A verdict.json rule as the report shows it."""
    name, value, threshold = str(rule["rule"]), rule.get("value"), rule.get("threshold")
    shown = None
    if isinstance(value, int | float) and isinstance(threshold, int | float):
        shown = _numeric(name, float(value), float(threshold))
    measured, required = shown or (
        _cell(value), f"{rule.get('comparison', '')} {_cell(threshold)}".strip())
    return GateRow(name, rule.get("suite"), measured, required, str(rule["outcome"]))


def _failed_rule_text(row: GateRow) -> str:
    where = f" on suite {row.suite}" if row.suite else ""
    return f"{row.rule}{where}: measured {row.measured}, required {row.required}"


def _blocked_for(gate: Mapping[str, Any], rows: Iterable[GateRow]) -> list[str]:
    """Why the gate blocked an overridden release, with rule values in the report's sign."""
    restated = {c["detail"] for c in gate["checks"]
                if str(c["check"]).startswith(EVAL_RULE_CHECK)}
    reasons = [_failed_rule_text(r) for r in rows if r.outcome == "fail"]
    return reasons + [r for r in gate["reasons"] if r not in restated]


def render(manifest: dict[str, Any]) -> str:
    """The human report of a release from its manifest (files must be named in it)."""
    import jinja2  # imported here: the CLI must not pay for it on `--help`

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,  # a missing field is a bug, not an empty cell
        autoescape=False,  # Markdown, not HTML; cells are escaped by the `cell` filter
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["cell"] = _cell
    env.filters["pct"] = _pct
    gate = manifest["gate"]
    rows = [gate_row(r) for r in gate["eval_rules"]]
    # The gate's eval_rule checks restate the rules in verdict.json's own sign; the gate table
    # shows them already, so only the other checks are listed.
    checks = [c for c in gate["checks"] if not str(c["check"]).startswith(EVAL_RULE_CHECK)]
    return env.get_template("report.md.j2").render(
        m=manifest, gate_rows=rows, other_checks=checks, blocked_for=_blocked_for(gate, rows))


def render_eval_chart(folder: Path, files: Mapping[str, str], title: str) -> Path:
    """Redraw a release's eval_chart.png from its own metrics and verdict, titled `title`."""
    from peftflow.evaluate import chart  # matplotlib is heavy: only when a release is built

    metrics = json.loads((folder / files["metrics"]).read_text(encoding="utf-8"))
    verdict = json.loads((folder / files["verdict"]).read_text(encoding="utf-8"))
    return chart.render(folder / files["eval_chart"], chart.changes(metrics, verdict),
                        chart.thresholds_of(verdict), title)
