"""`peftflow`: the command line. Each area registers its own subcommands.

Every subcommand returns an exit code; user errors print `error: ...` and never a traceback.
Area modules register through `register(subparsers)` and must not import heavy libraries
(torch, airflow) at module level, so `peftflow --help` stays fast.

Output rules, the same for every command: results (rows, the summary a command exists to
give) go to stdout; warnings, errors and progress go to stderr. A table has a header row, and
an empty list prints one line that says so (`no releases`), so a user never sees nothing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from peftflow import __version__, entry

# Modules that contribute subcommands, each with register(subparsers) -> None.
AREAS = (
    "peftflow.cli.spec",
    "peftflow.cli.plan",
    "peftflow.cli.dataset",
    "peftflow.cli.model",
    "peftflow.cli.eval",
    "peftflow.cli.audit",
    "peftflow.cli.releases",
    "peftflow.cli.compare",
    "peftflow.cli.doctor",
    "peftflow.cli.devices",
    "peftflow.cli.worker",
    "peftflow.airflow.services",
    "peftflow.cli.profile",
)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> None:
    """Rows on stdout under an upper-case header row, columns aligned; `empty` when none."""
    cells = [[str(cell) for cell in row] for row in rows]
    if not cells:
        print(empty)
        return
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for row in [[h.upper() for h in headers], *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftflow",
        description="Airflow orchestration for RWKV-PEFT adapter fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"peftflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREAS:  # a command module that fails to import is a bug: never skip it
        importlib.import_module(name).register(subparsers)
    return parser


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(entry.run(_main, argv))


if __name__ == "__main__":
    main()
