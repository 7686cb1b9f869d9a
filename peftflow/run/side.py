"""A run folder read as one side of `peftflow compare`, and what tells a run folder apart.

A run folder is `<artifact_root>/<dag_id>/<run>/` with one folder per stage (the stage table's
names) and `release_gate/`. Its metrics are evaluate_adapter's; the profile and base model are
the ones train_adapter recorded as inputs; anything missing is a warning, not an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftflow.errors import PeftflowError
from peftflow.release import gate, registry
from peftflow.release.compare.readers import read_losses, read_metrics, read_profile
from peftflow.release.compare.sides import LOSS_DATA, Kind, Side, gate_summary, release_side
from peftflow.run import stages
from peftflow.store import status_record as status

GATE_FOLDER = "release_gate"  # the gate task's folder (airflow/taskrun.py GATE_TASK)


def kind_of(folder: Path) -> Kind | None:
    """A release (its manifest inside), a run (stage folders inside), or neither (None)."""
    if (folder / registry.MANIFEST).is_file():
        return Kind.RELEASE
    if any((folder / name).is_dir() for name in (*stages.names(), GATE_FOLDER)):
        return Kind.RUN
    return None


def _stage(folder: Path, warnings: list[str]) -> dict[str, Any]:
    """A stage's status.json, or {} (with a warning when it is there but unreadable)."""
    if not (folder / status.STATUS_FILE).is_file():
        return {}
    try:
        return status.read(folder)
    except PeftflowError as exc:
        warnings.append(f"{str(exc).splitlines()[-1]}; its facts are not shown")
        return {}


def _input(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next((i for i in doc.get("inputs", []) if i["name"] == name), {})


def _gate(path: Path, warnings: list[str]) -> tuple[str, tuple[str, ...]]:
    if not path.is_file():
        return f"not decided (no {GATE_FOLDER}/{path.name})", ()
    try:
        d = gate.read_decision(path)
    except PeftflowError as exc:
        warnings.append(f"{str(exc).splitlines()[-1]}; the gate verdict is not shown")
        return "unreadable", ()
    return gate_summary(d.release, d.overridden, d.eval_verdict, d.quality_verdict), d.reasons


def _released_as(folder: Path, warnings: list[str]) -> str | None:
    done = _stage(folder / "release_adapter", warnings)
    if done.get("status") != "success":
        return None
    return f"{done['metrics'].get('profile')}/{done['metrics'].get('version')}"


def run_side(folder: Path) -> Side:
    """A run folder as a Side; its metrics.json must be there and usable."""
    warnings: list[str] = []
    metrics_path = folder / "evaluate_adapter" / "metrics.json"
    metrics, suites = read_metrics(metrics_path, "evaluate_adapter has not finished in this "
                                   "run; compare it after it has, or rerun the stage")
    prepare = _stage(folder / "prepare_dataset", warnings)
    train = _stage(folder / "train_adapter", warnings)
    recorded = _input(train, "profile") or _input(prepare, "profile") or metrics["profile"]
    profile = read_profile(metrics["profile"]["name"], recorded.get("sha256"), None,
                           recorded.get("path"), warnings)
    data = prepare.get("metrics", {})
    dataset = f"{data['dataset_name']} {data.get('dataset_version')}" \
        if data.get("dataset_name") else None
    base = _input(train, "base_model").get("sha256") or metrics["base_model"]["sha256"]
    verdict, reasons = _gate(folder / GATE_FOLDER / "gate_decision.json", warnings)
    loss_path = folder / "train_adapter" / LOSS_DATA
    losses = read_losses(loss_path, warnings) if loss_path.is_file() else ()
    if not loss_path.is_file():
        warnings.append(f"{loss_path}: not found (train_adapter has not written it); no curve "
                        "is drawn for this run")
    return Side(
        label=f"{folder.parent.name}/{folder.name}", kind=Kind.RUN, folder=folder,
        metrics_path=metrics_path, suites=suites, profile=profile, dataset=dataset,
        base_model_sha256=base, adapter_sha256=metrics["adapter"]["sha256"], gate=verdict,
        gate_reasons=reasons, released_as=_released_as(folder, warnings), losses=losses,
        loss_path=loss_path if losses else None, warnings=tuple(warnings))


def load(kind: Kind, folder: Path) -> Side:
    """The side a located folder is."""
    return release_side(folder) if kind is Kind.RELEASE else run_side(folder)
