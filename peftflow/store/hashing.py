"""Content hashes of files, streamed so that large artifacts need no memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def sha256_stream(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached_sha256(path: str | Path, cache_dir: Path) -> str:
    """sha256 of a large, rarely changing file (a base model), remembered by size and mtime.

    Hashing a multi-GB checkpoint takes seconds; every task that names it would pay that.
    The cache entry is keyed on the resolved path, size and mtime_ns, so any change rehashes.
    """
    import json

    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = hashlib.sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    entry = cache_dir / f"{key}.json"
    try:
        return str(json.loads(entry.read_text())["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(resolved)
    from peftflow.store import (
        atomic,  # local: atomic imports errors, keep this module dependency-free
    )

    atomic.write_json(entry, {"path": str(resolved), "sha256": digest})
    return digest
