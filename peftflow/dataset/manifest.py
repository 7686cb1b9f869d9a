"""Dataset manifests: one immutable, hashed record per dataset version.

`register_dataset` writes `<stem>.manifest.json` beside the data (it never touches the data);
`load_manifest` reads one back as a frozen, schema-checked `Manifest`; `Manifest.verify`
proves the data file is still exactly what was registered.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftflow.errors import (
    ConfigError,
    DataError,
    IntegrityError,
    MissingInputError,
    Problem,
    SpecError,
)
from peftflow.store import atomic, schemas, yamlmarks
from peftflow.store.hashing import sha256_file
from peftflow.store.paths import path_problem
from peftflow.store.status_record import utc_now

SCHEMA = "dataset_manifest"
SUFFIX = ".manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the manifest's folder
    sha256: str
    bytes: int
    records: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    text_field: str
    created_at: str
    source: str
    notes: str
    files: tuple[DataFile, ...]
    path: Path  # the manifest file itself
    sha256: str  # of the manifest file

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def data_paths(self) -> list[Path]:
        return [(self.path.parent / f.path).resolve() for f in self.files]

    def verify(self) -> None:
        """Raise unless every data file exists with the registered size and sha256."""
        for entry, path in zip(self.files, self.data_paths(), strict=True):
            if not path.is_file():
                raise MissingInputError(
                    f"{path}: data file of {self.label} not found (manifest {self.path}, "
                    f"files[].path {entry.path!r}); restore it or register a new version"
                )
            size = path.stat().st_size
            if size != entry.bytes:
                what = "is empty (0 bytes)" if size == 0 else f"has {size} bytes"
                raise IntegrityError(
                    f"{path}: {what} but manifest {self.path} records {entry.bytes}; the "
                    f"file changed after {self.label} was registered. Restore the registered "
                    "file, or register the new content as a new version"
                )
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"{path}: sha256 {actual[:12]}... does not match {entry.sha256[:12]}... "
                    f"recorded in {self.path} for {self.label}; the file changed after it was "
                    "registered. Restore it, or register the new content as a new version"
                )

    def content(self) -> dict[str, Any]:
        """What identifies a version's data (registration time and notes excluded)."""
        return {"text_field": self.text_field, "files": [asdict(f) for f in self.files]}

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "name": self.name,
            "version": self.version,
            "text_field": self.text_field,
            "created_at": self.created_at,
            "source": self.source,
            "notes": self.notes,
            "files": [asdict(f) for f in self.files],
        }


def scan_file(path: Path) -> tuple[str, int, int]:
    """(sha256, bytes, records) of a file in one streaming pass."""
    digest = hashlib.sha256()
    size = lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
            size += len(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return digest.hexdigest(), size, lines + (0 if last == b"\n" else 1)


def load_manifest(path: str | Path) -> Manifest:
    """Load and schema-check a manifest; errors name the file, line and fix. Every
    files[].path must stay inside the allowed roots or the manifest's own folder."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: dataset manifest not found; create it with "
                                "`peftflow dataset register FILE.jsonl --name N --version V`")
    # a regular file of bounded size (not a FIFO, not /dev/zero), then bounded nesting
    text = yamlmarks.read_limited(str(path), str(path)).decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError([Problem(str(path), exc.lineno, exc.colno, "$",
                                 f"not valid JSON: {exc.msg}; fix or re-register")]) from None
    except RecursionError:
        raise SpecError([Problem(str(path), 1, 1, "$", "nested far too deeply to be a "
                                 "manifest; re-register the dataset")]) from None
    yamlmarks.check_data(data, str(path))
    try:
        marked = yamlmarks.load(text, str(path))  # JSON is YAML: reuse its line marks
    except SpecError:  # a JSON corner YAML reads differently: keep going without line marks
        marked = yamlmarks.Marked(data)
    marked.data = data
    outside = _paths_outside(data, marked, path)
    # An absolute path also breaks the schema's pattern; the refusal above says more.
    refused = {p.path for p in outside}
    problems = [p for p in schemas.problems(marked, SCHEMA, str(path)) if p.path not in refused]
    if problems or outside:
        raise SpecError(sorted(problems + outside, key=lambda p: (p.line, p.col)))
    return Manifest(
        name=data["name"],
        version=data["version"],
        text_field=data["text_field"],
        created_at=data["created_at"],
        source=data.get("source", ""),
        notes=data.get("notes", ""),
        files=tuple(DataFile(**f) for f in data["files"]),
        path=path.resolve(),
        sha256=sha256_file(path),
    )


def _paths_outside(data: Any, marked: yamlmarks.Marked, path: Path) -> list[Problem]:
    """files[].path values that lead outside the allowed roots and the manifest's folder."""
    files = data.get("files") if isinstance(data, dict) else None
    found: list[Problem] = []
    for i, entry in enumerate(files if isinstance(files, list) else []):
        value = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(value, str) or not value:
            continue  # the schema reports it
        where = f"$.files[{i}].path"
        problem = path_problem(value, (path.resolve().parent / value).resolve(), path,
                               "the data file")
        if problem:
            found.append(Problem(str(path), *marked.locate(where), where, problem))
    return found


def manifest_path_for(data_path: str | Path) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.stem + SUFFIX)


def register_dataset(
    data_path: str | Path,
    name: str,
    version: str,
    text_field: str = "text",
    source: str = "",
    notes: str = "",
    out: str | Path | None = None,
) -> tuple[Path, bool]:
    """Write the manifest of one dataset version; (path, created). Identical re-registration
    is a no-op (created False); the same name and version with other content is refused."""
    data_path = Path(data_path).resolve()
    if not data_path.is_file():
        raise MissingInputError(f"{data_path}: data file not found")
    target = Path(out).resolve() if out else manifest_path_for(data_path)
    if target == data_path:
        raise ConfigError(f"{target}: --out would overwrite the data file; choose another path")
    sha256, size, records = scan_file(data_path)
    if size == 0:
        raise DataError(f"{data_path}: the file is empty (0 bytes); there is nothing to "
                        "register. Export the data again and check it has one JSON object per line")
    relative = os.path.relpath(data_path, target.parent)
    problem = path_problem(relative, data_path, target, "the data file")
    if problem:  # load_manifest would refuse the manifest: do not write it
        raise ConfigError(f"{target}: files[0].path: {problem}")
    doc = {
        "schema_version": 1, "name": name, "version": version, "text_field": text_field,
        "created_at": utc_now(), "source": source, "notes": notes,
        "files": [{"path": relative, "sha256": sha256, "bytes": size, "records": records}],
    }
    schemas.check(doc, SCHEMA, f"{target} (from the register arguments)")
    if target.exists():
        return target, _check_existing(target, doc)
    atomic.write_json(target, doc)
    return target, True


def _check_existing(target: Path, doc: dict[str, Any]) -> bool:
    try:
        existing = load_manifest(target)
    except SpecError as exc:
        raise ConfigError(f"{target} exists but is not a valid manifest ({exc}); move it away "
                          "or write the new one elsewhere with --out") from None
    label = f"{doc['name']}@{doc['version']}"
    if (existing.name, existing.version) != (doc["name"], doc["version"]):
        raise ConfigError(
            f"{target} already registers {existing.label}, not {label}; one manifest file "
            "holds one version: keep each version's data in its own folder "
            "(data/<name>/<version>/train.jsonl) or pass --out"
        )
    wanted = {"text_field": doc["text_field"], "files": doc["files"]}
    if existing.content() != wanted:
        old, new = existing.files[0], doc["files"][0]
        raise IntegrityError(
            f"{label} is already registered in {target} with different content "
            f"(sha256 {old.sha256[:12]}..., {old.records} records, text_field "
            f"{existing.text_field!r}; now sha256 {new['sha256'][:12]}..., {new['records']} "
            f"records, text_field {doc['text_field']!r}). A registered version never changes: "
            "register the new content under a new --version"
        )
    return False
