"""`peftflow compare A B`: two releases or runs side by side: metrics, config, loss curves."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftflow.release.compare.diff import Comparison, SuiteRow
    from peftflow.release.compare.readers import Suite

NAMES = """\
A and B are each one of:
  PROFILE/VERSION   a release under the releases root, e.g. smoke-cpu/r0001
  DAG_ID/RUN_ID     a run under the artifact root; the run id as Airflow shows it
                    (manual__2026-12-02T13:24:30+00:00) or as its folder is named
  PATH              a release folder (release_manifest.json inside) or a run folder
Prefix release: or run: when a name could mean both. List releases with
`peftflow releases list`; runs are the folders <artifact_root>/DAG_ID/.

Changes are B minus A; "vs base" is adapted/base - 1 of the suite's mean per-token loss
(negative is better), with its 95 % bootstrap CI. The PNG overlays both sides' per-step
training loss (loss_data.jsonl); it is written to --png, by default
./compare-<A>-vs-<B>.png (names made safe for a file name).
"""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="two releases or runs side by side: metrics, config, loss curves",
        description="Compare two releases or runs (or one of each): per-suite metrics, the\n"
                    "training-profile keys that differ, and both loss curves in one PNG.",
        epilog=NAMES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("a", metavar="A", help="the first release or run (the baseline)")
    parser.add_argument("b", metavar="B", help="the second release or run")
    parser.add_argument("--png", metavar="PATH",
                        help="where to write the loss curves (default: "
                             "./compare-<A>-vs-<B>.png)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document with everything instead of tables")
    parser.set_defaults(func=_compare)


def _safe(value: object) -> str:
    """A cell as text: control characters escaped, so a name cannot forge terminal output."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                        str(value))


def _pct(value: float | None, scale: float = 100.0) -> str:
    return "-" if value is None else f"{value * scale:+.2f} %"


def _suite_cells(row: SuiteRow) -> list[str]:
    a, b = row.a, row.b

    def ci(side: Suite | None) -> str:
        return "-" if side is None else \
            f"{side.ci95[0] * 100:+.2f} .. {side.ci95[1] * 100:+.2f} %"

    overlap = f"only in {row.only_in}" if row.only_in else "yes" if row.ci_overlap else "no"
    return [row.name, row.kind,
            "-" if a is None else f"{a.adapted_loss:.4f}",
            "-" if b is None else f"{b.adapted_loss:.4f}",
            "-" if row.change is None else f"{row.change:+.4f}",
            _pct(row.change_pct, 1.0),
            _pct(None if a is None else a.relative_change),
            _pct(None if b is None else b.relative_change), ci(a), ci(b), overlap]


def _value(value: Any, present: bool) -> str:
    if not present:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _print(result: Comparison, png: Path | None) -> None:
    from peftflow.cli import main as cli

    def table(headers: tuple[str, ...], rows: list[list[str]], empty: str) -> None:
        cli.print_table(headers, [[_safe(c) for c in row] for row in rows], empty=empty)

    for name, side in (("A", result.a), ("B", result.b)):
        print(_safe(f"{name}  {side.kind:<7}  {side.label}  {side.folder}"))
    print()
    table(("suite", "kind", "A loss", "B loss", "B-A", "B-A %", "A vs base", "B vs base",
           "A ci95", "B ci95", "ci overlap"), [_suite_cells(r) for r in result.suites],
          empty="no suites")
    print()
    table(("fact", "A", "B", "same"),
          [[f.name, _SHA256.sub(r"\1...", f.a), _SHA256.sub(r"\1...", f.b),
            "yes" if f.same else "no"] for f in result.facts], empty="no facts")
    print()
    print(_safe(_SHA256.sub(r"\1...", result.config.summary)))
    if result.config.differences:
        table(("profile key", "A", "B"),
              [[d.key, _value(d.a, d.in_a), _value(d.b, d.in_b)]
               for d in result.config.differences], empty="no differences")
    print()
    print(_safe(f"loss curves: {png}") if png else
          "loss curves: not drawn (neither side has loss data)")


def _draw(result: Comparison, where: str | None) -> Path | None:
    from peftflow.errors import ConfigError
    from peftflow.release.compare import chart
    from peftflow.run import locate

    a, b = result.a, result.b
    if not a.losses and not b.losses:
        print("warning: no loss curves drawn: neither A nor B has loss data", file=sys.stderr)
        return None
    path = Path(where).expanduser() if where else Path.cwd() / locate.png_name(a.label, b.label)
    try:
        return chart.render(path, [(f"A: {a.label}", a.losses), (f"B: {b.label}", b.losses)],
                            "training loss per optimizer step: A vs B")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the PNG ({exc.strerror or exc}); pass --png "
                          "with a file path in a writable folder") from None


def _compare(args: argparse.Namespace) -> int:
    from peftflow.release.compare import diff
    from peftflow.run import locate, side

    first, second = locate.locate(args.a), locate.locate(args.b)
    result = diff.compare(side.load(first.kind, first.folder),
                          side.load(second.kind, second.folder))
    for warning in result.warnings:
        print("\n  ".join(_safe(line) for line in f"warning: {warning}".splitlines()),
              file=sys.stderr)
    png = _draw(result, args.png)
    if args.json:
        print(json.dumps(result.as_dict(png), indent=2, ensure_ascii=False, default=str))
    else:
        _print(result, png)
    return 0
