"""report.md of a release, rendered with Jinja2 from templates/report.md.j2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPORT = "report.md"
TEMPLATES = Path(__file__).resolve().parent / "templates"


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
    return env.get_template("report.md.j2").render(m=manifest)
