"""README.md's `## CLI` table names exactly the commands and subcommands `peftflow --help` has.

A first-column cell is alternatives split on ` / `: `peftflow audit show [--json]` / `verify`
names command `audit` with subcommands `show` and `verify`. A lower-case word after the command
is a subcommand; upper-case words, `[...]` and `--flags` are arguments.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from peftflow.cli.main import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
WORD = re.compile(r"[a-z][a-z0-9-]*")

Commands = dict[str, set[str]]


def _cli_rows() -> list[str]:
    """The first cell of each body row of the first table under `## CLI`."""
    section = README.read_text(encoding="utf-8").split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    rows: list[str] = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append(line.split("|")[1].strip())
        elif rows:
            break  # the first table has ended
    return [row for row in rows[2:] if row]  # past the header and the --- line


def readme_commands() -> Commands:
    found: Commands = {}
    for cell in _cli_rows():
        command = None
        for alternative in cell.replace("`", "").split(" / "):
            words = alternative.split()
            if words[0] == "peftflow":
                command, words = words[1], words[2:]
                found.setdefault(command, set())
            assert command is not None, f"README.md ## CLI: {cell!r} names no command first"
            if words and WORD.fullmatch(words[0]):
                found[command].add(words[0])
    return found


def _actions(parser: argparse.ArgumentParser) -> set[str]:
    """A command's subcommands, or the choices of its first positional (`services ACTION`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
        if not action.option_strings and action.choices is not None:
            return {str(choice) for choice in action.choices}
    return set()


def parser_commands() -> Commands:
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: _actions(sub) for name, sub in top.choices.items()}


def test_the_readme_table_is_read_as_intended() -> None:
    """A parse that found nothing would pass the comparison below on an empty parser too."""
    commands = readme_commands()
    assert commands["audit"] >= {"show", "verify"}
    assert commands["validate"] == set()  # `[PATHS]` is an argument, not a subcommand
    assert commands["dataset"] >= {"register", "announce", "make-smoke"}


def test_the_readme_cli_table_lists_every_command_and_subcommand_of_the_parser() -> None:
    assert readme_commands() == parser_commands()
