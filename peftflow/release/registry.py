"""The release registry: `<releases_root>/<profile>/<version>/release_manifest.json`.

The folders are the registry. A release folder appears in one rename with its manifest
inside, so there is no second index that could disagree with them. Blocked releases are
recorded in `<releases_root>/<profile>/blocked.jsonl`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import ConfigError, IntegrityError, MissingInputError, SpecError
from peftflow.store import audit, schemas
from peftflow.store.hashing import sha256_file
from peftflow.store.status_record import utc_now

MANIFEST = "release_manifest.json"
BLOCKED = "blocked.jsonl"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SEQ_RE = re.compile(r"^r(\d{4,})$")


@dataclass(frozen=True)
class ReleaseManifest:
    profile: str
    version: str
    dir: Path
    created_at: str
    adapter_path: Path
    adapter_sha256: str
    metrics_path: Path  # metrics.json of the release: the baseline for retrain gates
    manifest_path: Path
    dag_id: str
    run_id: str
    doc: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.doc["metrics"])


def root_dir(root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else settings.get().releases_root


def profile_dir(profile: str, root: str | Path | None = None) -> Path:
    if not VERSION_RE.match(profile):
        raise ConfigError(f"{profile!r} is not a valid profile name for a release folder; "
                          "use letters, digits, '.', '_' or '-'")
    return root_dir(root) / profile


def load_manifest(path: str | Path) -> ReleaseManifest:
    """Read and schema-check one release_manifest.json."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: release manifest not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: release manifest is not valid JSON ({exc})") from None
    try:
        schemas.check(doc, "release_manifest", str(path))
    except SpecError as exc:
        raise IntegrityError(f"{exc}\n{path}: not a valid release manifest") from None
    folder = path.parent
    return ReleaseManifest(
        profile=doc["profile"]["name"], version=doc["version"], dir=folder,
        created_at=doc["created_at"], adapter_path=folder / doc["adapter"]["file"],
        adapter_sha256=doc["adapter"]["sha256"], metrics_path=folder / doc["files"]["metrics"],
        manifest_path=path, dag_id=doc["airflow"]["dag_id"], run_id=doc["airflow"]["run_id"],
        doc=doc,
    )


def scan(profile: str | None = None,
         root: str | Path | None = None) -> tuple[list[ReleaseManifest], list[str]]:
    """All readable releases (oldest first) and a problem line for each unreadable one."""
    base = root_dir(root)
    folders = [profile_dir(profile, root)] if profile else sorted(
        p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
    ) if base.is_dir() else []
    found, problems = [], []
    for folder in folders:
        if not folder.is_dir():
            continue
        for release in sorted(folder.iterdir()):
            if not release.is_dir() or release.name.startswith("."):
                continue  # .tmp-* folders of an interrupted release are not releases
            try:
                found.append(load_manifest(release / MANIFEST))
            except (MissingInputError, IntegrityError) as exc:
                problems.append(str(exc).splitlines()[-1])
    found.sort(key=lambda m: (m.profile, m.created_at, m.version))
    return found, problems


def list_releases(profile: str | None = None,
                  root: str | Path | None = None) -> list[ReleaseManifest]:
    return scan(profile, root)[0]


def current_release(profile: str, root: str | Path | None = None) -> ReleaseManifest | None:
    """The latest release of a profile, or None; a damaged release folder is an error."""
    found, problems = scan(profile, root)
    if problems:
        raise IntegrityError("cannot tell the current release while a release folder is "
                             "damaged: " + "; ".join(problems))
    return found[-1] if found else None


def baseline_metrics_path(profile: str, root: str | Path | None = None) -> Path | None:
    """metrics.json of the profile's current release (the retrain gate's baseline), or None."""
    release = current_release(profile, root)
    return None if release is None else release.metrics_path


def get_release(profile: str, version: str, root: str | Path | None = None) -> ReleaseManifest:
    return load_manifest(profile_dir(profile, root) / version / MANIFEST)


def next_version(existing: list[ReleaseManifest], folder: Path) -> str:
    """r0001, r0002, ...: one more than the highest sequential version ever used."""
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _SEQ_RE.match(p.name))] \
        if folder.is_dir() else []
    numbers += [int(m.group(1)) for r in existing if (m := _SEQ_RE.match(r.version))]
    return f"r{max(numbers, default=0) + 1:04d}"


def verify_release(release: ReleaseManifest) -> list[str]:
    """Problems with the files a manifest lists (missing or hash mismatch); [] when intact."""
    problems = []
    for name, entry in release.doc["files_sha256"].items():
        path = release.dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != entry:
            problems.append(f"{path}: sha256 differs from the manifest; the file was changed")
    return problems


def record_block(decision: Any, profile: str, dag_id: str, run_id: str, *,
                 try_number: int | None = None, actor: str | None = None,
                 root: str | Path | None = None) -> dict[str, Any]:
    """Append a `blocked` record for a gate decision that refused; once per decision."""
    if decision.release:
        raise ValueError("record_block() called with a decision that releases")
    path = profile_dir(profile, root) / BLOCKED
    record = {
        "ts": utc_now(), "profile": profile, "dag_id": dag_id, "run_id": run_id,
        "try_number": try_number, "actor": actor, "decision_id": decision.decision_id,
        "reasons": list(decision.reasons), "eval_verdict": decision.eval_verdict,
        "quality_verdict": decision.quality_verdict,
        "evidence": [{"name": e.name, "path": e.path, "sha256": e.sha256}
                     for e in decision.evidence],
    }
    with audit.locked(path):
        for old in list_blocked(profile, root):
            if (old.get("decision_id"), old.get("run_id")) == (decision.decision_id, run_id):
                return old
        line = json.dumps(audit.redact(record), ensure_ascii=False, sort_keys=True)
        audit.append_line(path, line.encode("utf-8") + b"\n")
    return record


def list_blocked(profile: str | None = None,
                 root: str | Path | None = None) -> list[dict[str, Any]]:
    """Blocked records, oldest first (unreadable lines are skipped)."""
    base = root_dir(root)
    files = [profile_dir(profile, root) / BLOCKED] if profile else sorted(base.glob(f"*/{BLOCKED}"))
    records = []
    for file in files:
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return sorted(records, key=lambda r: str(r.get("ts")))
