"""One side of a comparison, and a release folder read into one.

What a release records is preferred over files elsewhere that may have changed since: its own
metrics.json, loss_data.jsonl and profile.yaml, checked against its manifest. Unusable metrics
are an error; anything else missing is a warning on the side. A run folder is read into a Side
by peftflow/run/side.py, which knows the run's stage folders.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from peftflow.release import registry
from peftflow.release.compare.readers import (
    ProfileRecord,
    Suite,
    read_losses,
    read_metrics,
    read_profile,
)
from peftflow.store.hashing import sha256_file

LOSS_DATA = "loss_data.jsonl"


class Kind(enum.StrEnum):
    RELEASE = "release"
    RUN = "run"


@dataclass(frozen=True)
class Side:
    label: str  # PROFILE/VERSION of a release, DAG_ID/RUN_FOLDER of a run
    kind: Kind
    folder: Path
    metrics_path: Path
    suites: tuple[Suite, ...]
    profile: ProfileRecord
    dataset: str | None  # "name version"
    base_model_sha256: str | None
    adapter_sha256: str | None
    gate: str  # "passed (eval pass, dataset pass)", "blocked (...)", "not decided (...)"
    gate_reasons: tuple[str, ...]
    released_as: str | None  # PROFILE/VERSION; None: not (yet) released
    losses: tuple[float, ...]  # per optimizer step, from loss_data.jsonl
    loss_path: Path | None
    warnings: tuple[str, ...]


def _check_recorded(path: Path, recorded: str | None, warnings: list[str]) -> None:
    if recorded is not None and path.is_file() and sha256_file(path) != recorded:
        warnings.append(f"{path}: differs from the sha256 its release manifest records; "
                        "`peftflow releases show PROFILE VERSION --verify` lists every "
                        "changed file")


def gate_summary(release: bool, overridden: bool, eval_verdict: str | None,
                 quality_verdict: str | None) -> str:
    """A gate decision in one phrase: `passed (eval pass, dataset warn)`."""
    verdict = ("passed by override" if overridden else "passed") if release else "blocked"
    return f"{verdict} (eval {eval_verdict}, dataset {quality_verdict})"


def release_side(folder: Path) -> Side:
    """A release folder (release_manifest.json inside)."""
    release = registry.load_manifest(folder / registry.MANIFEST)
    doc, files, hashes = release.doc, release.doc["files"], release.doc["files_sha256"]
    warnings: list[str] = []
    for name in (files["metrics"], files.get("loss_data"), files.get("profile")):
        if name is not None:
            _check_recorded(folder / name, hashes.get(name), warnings)
    _, suites = read_metrics(release.metrics_path, "the release is damaged; `peftflow "
                             f"releases show {release.profile} {release.version} --verify` "
                             "lists what else is missing")
    copy = folder / files["profile"] if "profile" in files else None
    profile = read_profile(release.profile, doc["profile"]["sha256"], copy,
                           doc["profile"]["path"], warnings)
    loss_path = folder / files["loss_data"] if "loss_data" in files else None
    if loss_path is None:  # released before loss data was: the training run may still have it
        beside = Path(doc["adapter"]["source"]).parent / LOSS_DATA
        loss_path = beside if beside.is_file() else None
        warnings.append(f"{folder}: the release has no {LOSS_DATA} (released before it was "
                        "included); " + (f"using the training run's {beside}" if loss_path
                                         else f"{beside} is gone too: no curve is drawn"))
    g = doc["gate"]
    return Side(
        label=f"{release.profile}/{release.version}", kind=Kind.RELEASE, folder=folder,
        metrics_path=release.metrics_path, suites=suites, profile=profile,
        dataset=f"{doc['dataset']['name']} {doc['dataset']['version']}",
        base_model_sha256=doc["base_model"]["sha256"], adapter_sha256=release.adapter_sha256,
        gate=gate_summary(True, g["overridden"], g["eval_verdict"], g["quality_verdict"]),
        gate_reasons=tuple(g["reasons"]), released_as=f"{release.profile}/{release.version}",
        losses=read_losses(loss_path, warnings) if loss_path else (), loss_path=loss_path,
        warnings=tuple(warnings))
