"""status.json: the record every stage writes, in one shape (schemas/stage_status.schema.json)."""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftflow import __version__
from peftflow.errors import IntegrityError, MissingInputError
from peftflow.store import atomic, schemas
from peftflow.store.hashing import sha256_file

STATUS_FILE = "status.json"


@dataclass(frozen=True)
class FileRef:
    name: str
    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, name: str, path: str | Path) -> FileRef:
        """Hash a file that exists now."""
        resolved = Path(path).resolve()
        if not resolved.is_file():
            raise MissingInputError(f"{resolved}: file not found (declared as {name!r})")
        return cls(name, str(resolved), sha256_file(resolved), resolved.stat().st_size)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "bytes": self.bytes}

    def verify(self) -> None:
        """Raise unless the file still exists, is non-empty and has the recorded hash."""
        path = Path(self.path)
        if not path.is_file():
            raise MissingInputError(f"{self.path}: declared {self.name!r} is missing")
        size = path.stat().st_size
        if size == 0:
            raise IntegrityError(f"{self.path}: declared {self.name!r} is empty")
        if size != self.bytes or sha256_file(path) != self.sha256:
            raise IntegrityError(
                f"{self.path}: declared {self.name!r} does not match its recorded sha256 "
                f"{self.sha256[:12]}...; it was changed or truncated after it was written. "
                "Rerun the stage that produced it."
            )


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def tool_versions(**extra: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "peftflow": __version__}
    versions.update({k: str(v) for k, v in extra.items()})
    return versions


@dataclass
class StageRecorder:
    """Collects a stage's inputs, outputs and metrics, then writes status.json atomically.

    Usage: rec = StageRecorder("prepare_dataset", out_dir); rec.add_input(...);
    ...; rec.add_output(...); rec.write("success").
    """

    stage: str
    out_dir: Path
    started_at: str = field(default_factory=utc_now)
    _t0: float = field(default_factory=time.monotonic)
    inputs: list[FileRef] = field(default_factory=list)
    outputs: list[FileRef] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=tool_versions)
    devices: dict[str, Any] | None = None  # a GPU stage's lease: host, ids, acquired_at

    def add_input(self, name: str, path: str | Path) -> FileRef:
        ref = FileRef.of(name, path)
        self.inputs.append(ref)
        return ref

    def add_output(self, name: str, path: str | Path) -> FileRef:
        ref = FileRef.of(name, path)
        self.outputs.append(ref)
        return ref

    def document(self, status: str, message: str = "", exit_code: int = 0) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": 1,
            "stage": self.stage,
            "status": status,
            "started_at": self.started_at,
            "finished_at": utc_now(),
            "duration_s": round(time.monotonic() - self._t0, 3),
            "inputs": [r.as_dict() for r in self.inputs],
            "outputs": [r.as_dict() for r in self.outputs] if status == "success" else [],
            "tools": self.tools,
            "metrics": self.metrics,
            "exit_code": exit_code,
        }
        if message:
            doc["message"] = message
        if self.devices is not None:
            doc["devices"] = self.devices
        return doc

    def write(self, status: str, message: str = "", exit_code: int = 0) -> Path:
        doc = self.document(status, message, exit_code)
        schemas.check(doc, "stage_status", str(Path(self.out_dir) / STATUS_FILE))
        path = Path(self.out_dir) / STATUS_FILE
        atomic.write_json(path, doc)
        return path


def read(path: str | Path) -> dict[str, Any]:
    """Load and schema-check a status.json; raise a clear error when it is absent or bad."""
    path = Path(path)
    if path.is_dir():
        path = path / STATUS_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: stage status not found; did the stage run?")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: not valid JSON ({exc}); rerun the stage") from None
    schemas.check(doc, "stage_status", str(path))
    return doc  # type: ignore[no-any-return]


def outputs_of(doc: dict[str, Any]) -> dict[str, FileRef]:
    return {o["name"]: FileRef(**o) for o in doc.get("outputs", [])}
