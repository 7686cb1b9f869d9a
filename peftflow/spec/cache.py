"""Remembers specs that validated, so a re-parse of an unchanged spec skips validation.

An entry is used only while the spec's bytes (sha256) and the size and mtime of every file
that took part in its validation (profile, manifest, suites, orchestration config, schemas,
the validator's own code) are unchanged. Anything else re-validates. One JSON file, written
atomically; a lost update just means one more validation.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from peftflow import __version__, settings
from peftflow.store import atomic

# Every source file of the package takes part: validation reaches into the store, the
# training profiles, the dataset manifests and the eval suites, and a list by hand goes stale.
CODE_SUFFIXES = (".py", ".c")


def _stat(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _global_deps() -> list[Path]:
    s = settings.get()
    package = Path(__file__).resolve().parents[1]
    return [s.orchestration_config, s.devices_config,
            *sorted(s.schemas_dir.glob("*.schema.json")),
            *sorted(p for p in package.rglob("*") if p.suffix in CODE_SUFFIXES)]


class SpecCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirty = False
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            valid = loaded.get("version") == __version__
        except (OSError, ValueError, AttributeError):
            loaded, valid = {}, False
        self.entries: dict[str, Any] = loaded.get("entries", {}) if valid else {}
        self.global_deps = {str(p): _stat(p) for p in _global_deps()}

    def get(self, spec_path: Path, sha256: str) -> dict[str, Any] | None:
        entry = self.entries.get(str(spec_path.resolve()))
        if not entry or entry["sha256"] != sha256 or entry["global"] != self.global_deps:
            return None
        if any(_stat(Path(p)) != st for p, st in entry["deps"].items()):
            return None
        return entry["data"]  # type: ignore[no-any-return]

    def put(self, spec_path: Path, sha256: str, deps: set[Path], data: dict[str, Any]) -> None:
        self.entries[str(spec_path.resolve())] = {
            "sha256": sha256, "global": self.global_deps,
            "deps": {str(p): _stat(p) for p in sorted(deps)}, "data": data,
        }
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        # A read-only home only costs the next parse a validation.
        with contextlib.suppress(OSError):
            atomic.write_json(self.path, {"version": __version__, "entries": self.entries})
        self.dirty = False


def default() -> SpecCache:
    return SpecCache(settings.get().airflow_home / "peftflow-spec-cache.json")
