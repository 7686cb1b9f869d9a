"""Skip finished work: a successful stage result is reused when its cache key matches.

The key covers the stage's input hashes, its config (profile, spec section) and the code of
the stage (see plan.code_version). An entry is trusted only after every output it lists is
re-verified against its sha256; otherwise the stage runs again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import PeftflowError
from peftflow.store import atomic
from peftflow.store import status_record as status


def _entry(stage: str, key: str) -> Path:
    return settings.get().artifact_root / "_cache" / stage / f"{key}.json"


def lookup(stage: str, key: str) -> dict[str, Any] | None:
    """The verified status document of an earlier success with this key, or None."""
    entry = _entry(stage, key)
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
        status_path = Path(stored["status_path"])
        doc = status.read(status_path)
        if doc["status"] != "success":
            return None
        for ref in status.outputs_of(doc).values():
            ref.verify()
    except (OSError, ValueError, KeyError, PeftflowError):
        return None
    doc["_status_path"] = str(status_path)
    doc["_run_id"] = str(stored.get("run_id") or status_path.parent.parent.name)
    return doc


def store(stage: str, key: str, status_path: Path, run_id: str) -> None:
    atomic.write_json(_entry(stage, key), {"status_path": str(status_path), "run_id": run_id})
