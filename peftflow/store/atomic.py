"""Atomic file output: write under a temporary name in the same folder, fsync, rename.

A reader (or a later stage) sees either no file or the complete file, never a partial one,
even when the writer is killed or the disk fills up half way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from peftflow.errors import ResourceError

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on success it replaces `path` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle  # type: ignore[misc]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        _discard(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(
                f"{target}: no space left on device while writing; free space under "
                f"{target.parent} and retry (nothing was written)"
            ) from exc
        raise
    except BaseException:
        _discard(tmp)
        raise


def _umask() -> int:
    # mkstemp creates 0600 files; published artifacts get the usual umask-derived mode.
    current = os.umask(0)
    os.umask(current)
    return current


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temp files an interrupted writer left in `folder`; returns how many."""
    removed = 0
    for stale in Path(folder).glob(TMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
    return removed
