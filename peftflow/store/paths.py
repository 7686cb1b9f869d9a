"""Path rules every reader shares: how a path written in a file resolves, whether it stays
inside the allowed roots, and how a path is shown in a message (control characters escaped).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from peftflow import settings


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


def display_path(path: Path) -> str:
    """Project-relative path for messages when the file is inside the project; control
    characters escaped, so a file named with a newline or an escape code cannot forge a log
    line or a terminal's output."""
    root = settings.get().project_root
    try:
        shown = str(path.resolve().relative_to(root))
    except ValueError:
        shown = str(path)
    if any(_is_control(c) for c in shown):
        shown = "".join(c.encode("unicode_escape").decode("ascii") if _is_control(c) else c
                        for c in shown)
    return shown


def resolve_ref(value: str) -> Path:
    """A path from a spec: relative to the project root; symlinks resolved."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = settings.get().project_root / path
    return path.resolve()


def inside_allowed_roots(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in settings.get().allowed_roots)


def resolve_as_written(path: Path) -> Path:
    """`path` with the symlinks of its folders resolved, but not a symlink at its end.

    For an interpreter: a venv's bin/python is a symlink to /usr/bin/python3.x, and what the
    profile names (and what we trust) is the venv, so the link itself must lie inside the
    allowed roots, not its target. The folders are still resolved, so `vendor/link/../x`
    is judged where the kernel would open it.
    """
    path = path if path.is_absolute() else Path.cwd() / path
    if path.name in ("", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def path_problem(value: str, resolved: Path, source: Path, what: str) -> str | None:
    """Why `value` (written in the file `source`, resolved to `resolved`) may not be used, or
    None: it must lie inside the allowed roots or inside the folder that holds `source`.

    The second case keeps a profile, suite or manifest usable next to its own files outside
    the project (a scratch folder); the deployment only reads such files from inside the
    allowed roots (see spec/validate.py), so it never widens what a spec can reach.
    """
    beside = source.resolve().parent
    if inside_allowed_roots(resolved) or (
            beside != Path(beside.anchor) and resolved.is_relative_to(beside)):
        return None
    roots = ", ".join(str(r) for r in settings.get().allowed_roots)
    return (f"{value!r} resolves to {resolved}, outside the allowed roots ({roots}) and "
            f"outside {beside}, the folder of this file; move {what} under the project or "
            "models root, or add its folder to PEFTFLOW_ALLOWED_ROOTS")
