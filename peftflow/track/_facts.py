"""What one Airflow run hands the tracker, read from its stages' records (no MLflow here).

The records are the XComs of the stages (peftflow.run.plan.record): status path, outputs with
their hashes, metrics, cache key and, for a reused result, the run that computed it. Files
are read only after their recorded sha256 still holds, so a changed file is never logged as
the run's data.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import PeftflowError
from peftflow.run import inputs
from peftflow.run.runinfo import safe_segment
from peftflow.store import audit
from peftflow.store import status_record as status
from peftflow.train import plots

TEXT_MAX = 5000  # MLflow keeps 8000 characters of a tag and 6000 of a param
GATE = {"passed": "pass", "overridden": "overridden", "blocked": "blocked"}
_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow allows in a metric name

History = tuple[tuple[int, float], ...]  # (step, value)


@dataclass(frozen=True)
class StageData:
    """One stage's result: what it logs (when this run holds it) and how to find it again."""

    task_id: str
    cache_key: str
    folder: str
    reused_from: str | None  # the Airflow run that computed a reused result
    source_dag: str | None  # that run's DAG, when its folder lies under the artifact root
    metrics: Mapping[str, History]
    adapter: str | None  # the adapter file (copied into MLflow only when asked)
    problems: tuple[str, ...]  # data that could not be read, said in a tag


@dataclass(frozen=True)
class RunFacts:
    dag_id: str
    run_id: str
    key: str  # sha256 of DAG id and run id: the tag the MLflow run is found again by
    fingerprint: str  # changes when the run's records change (a cleared and re-run DAG run)
    finished: bool  # the run ended in a release: MLflow status FINISHED, else FAILED
    outcome: str
    params: Mapping[str, str]
    tags: Mapping[str, str]
    stages: tuple[StageData, ...]


def clip(text: str, limit: int = TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 2] + " …"


def run_key(dag_id: str, run_id: str) -> str:
    return hashlib.sha256(f"{dag_id}\0{run_id}".encode()).hexdigest()[:40]


def _verified(record: Mapping[str, Any], name: str) -> Path:
    """The output `name` of a record, after its size and sha256 still match."""
    found = inputs.upstream_outputs(dict(record), str(record.get("stage") or "upstream"))
    if name not in found:
        raise KeyError(f"the record lists no {name!r} output")
    found[name].verify()
    return Path(found[name].path)


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(float(value)) else None


def _train(record: Mapping[str, Any]) -> dict[str, History]:
    rows = plots.read_loss_data(_verified(record, "loss_data"))
    losses = tuple((step, v) for step, row in enumerate(rows)
                   if isinstance(row, dict) and (v := _number(row.get("loss"))) is not None)
    return {"train/loss": losses}


def _eval_doc(record: Mapping[str, Any]) -> dict[str, Any]:
    doc = json.loads(_verified(record, "metrics").read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else {}


def _evaluate(record: Mapping[str, Any]) -> dict[str, History]:
    found: dict[str, History] = {}
    for suite, row in (_eval_doc(record).get("suites") or {}).items():
        ci = row.get("ci95") if isinstance(row.get("ci95"), list) else [None, None]
        values = {"base_loss": row.get("base_loss"), "adapted_loss": row.get("adapted_loss"),
                  "relative_change": row.get("relative_change"),
                  "ci95_low": ci[0] if ci else None, "ci95_high": ci[-1] if ci else None}
        for name, value in values.items():
            if (number := _number(value)) is not None:
                found[f"eval/{_NAME.sub('_', str(suite))}/{name}"] = ((0, number),)
    return found


READERS = {"train_adapter": _train, "evaluate_adapter": _evaluate}


def _source_dag(folder: Path) -> str | None:
    root = settings.get().artifact_root
    return folder.relative_to(root).parts[0] if folder.is_relative_to(root) else None


def _stage(task_id: str, record: Mapping[str, Any]) -> StageData:
    folder = Path(str(record.get("status_path") or "")).parent
    metrics: dict[str, History] = {}
    problems: list[str] = []
    reader = READERS.get(task_id)
    if reader is not None:
        try:
            metrics = reader(record)
        except (PeftflowError, OSError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"{task_id}: {exc}")
    adapter = ((record.get("outputs") or {}).get("adapter") or {}).get("path")
    return StageData(task_id, str(record.get("cache_key") or ""), str(folder),
                     record.get("reused_from") if record.get("reused") else None,
                     _source_dag(folder), metrics, adapter, tuple(problems))


def _inputs(record: Mapping[str, Any] | None) -> dict[str, str]:
    """name -> sha256 of the inputs a stage's status.json lists (empty when unreadable)."""
    try:
        doc = status.read(Path(str((record or {})["status_path"])))
    except (PeftflowError, KeyError, OSError):
        return {}
    return {str(i["name"]): str(i["sha256"]) for i in doc.get("inputs", [])}


def _profile(records: Mapping[str, Mapping[str, Any] | None], params: Mapping[str, Any]) -> str:
    try:
        name = _eval_doc(records.get("evaluate_adapter") or {})["profile"]["name"]
    except (PeftflowError, OSError, KeyError, TypeError, ValueError):
        name = ((records.get("release_adapter") or {}).get("metrics") or {}).get("profile")
    return str(name or Path(str(params.get("training_profile") or "")).stem)


def _params(records: Mapping[str, Mapping[str, Any] | None],
            params: Mapping[str, Any]) -> dict[str, str]:
    train = records.get("train_adapter") or {}
    inputs = _inputs(train)
    prepare = (records.get("prepare_dataset") or {}).get("metrics") or {}
    found: dict[str, Any] = {
        "profile": _profile(records, params),
        "profile_sha256": (train.get("metrics") or {}).get("profile_sha256")
        or inputs.get("profile"),
        "dataset": prepare.get("dataset_name"), "dataset_version": prepare.get("dataset_version"),
        "base_model_sha256": inputs.get("base_model"),
    }
    found.update({f"cache_key.{t}": r.get("cache_key") for t, r in records.items() if r})
    found.update({f"trigger.{k}": v for k, v in audit.redact(dict(params)).items()
                  if isinstance(v, str | int | float | bool)})
    return {k: clip(str(v), 500) for k, v in found.items() if v not in (None, "")}


def _stage_outcomes(summary: Mapping[str, Any]) -> dict[str, str]:
    return {str(s.get("task_id")): str(s.get("outcome")) for s in summary.get("stages") or []}


def _gate(records: Mapping[str, Mapping[str, Any] | None],
          summary: Mapping[str, Any]) -> dict[str, str]:
    outcome = _stage_outcomes(summary).get("release_gate")
    record = records.get("release_gate") or {}
    if outcome is None and record:
        outcome = "overridden" if record.get("overridden") else "passed"
    if outcome is None:
        return {}
    reasons = [str(r) for r in summary.get("reasons") or []]
    if record.get("decision_path") and not reasons:
        try:
            doc = json.loads(Path(str(record["decision_path"])).read_text(encoding="utf-8"))
            reasons = [str(r) for r in doc.get("reasons") or []]
        except (OSError, ValueError, AttributeError):
            pass
    tags = {"peftflow.gate": GATE.get(outcome, outcome)}
    if reasons:
        tags["peftflow.gate.reasons"] = clip("\n".join(reasons))
    if record.get("decision_path"):
        tags["peftflow.link.gate_decision"] = str(record["decision_path"])
    return tags


def _tags(dag_id: str, run_id: str, records: Mapping[str, Mapping[str, Any] | None],
          summary: Mapping[str, Any], stages: tuple[StageData, ...]) -> dict[str, str]:
    release = (records.get("release_adapter") or {})
    metrics = release.get("metrics") or {}
    lines = [f"**{summary.get('headline') or summary.get('outcome')}**", ""]
    lines += [f"- {s.get('task_id')}: {s.get('outcome')}" for s in summary.get("stages") or []]
    found: dict[str, Any] = {
        "peftflow.outcome": summary.get("outcome"), "peftflow.release": summary.get("release"),
        "peftflow.dataset_quality": ((records.get("prepare_dataset") or {}).get("metrics")
                                     or {}).get("verdict"),
        "peftflow.eval_verdict": ((records.get("evaluate_adapter") or {}).get("metrics")
                                  or {}).get("verdict"),
        "peftflow.link.run_dir": str(settings.get().artifact_root / dag_id
                                     / safe_segment(run_id)),
        "peftflow.link.release_dir": metrics.get("release_dir"),
        "peftflow.link.release_manifest": ((release.get("outputs") or {})
                                           .get("release_manifest") or {}).get("path"),
        "peftflow.release.noop": str(metrics["noop"]).lower() if "noop" in metrics else None,
        "mlflow.note.content": clip("\n".join(lines)),  # the run's description in the MLflow UI
        **_gate(records, summary),
    }
    found.update({f"peftflow.link.{s.task_id}": s.folder for s in stages})
    problems = [p for s in stages for p in s.problems]
    if problems:
        found["peftflow.problems"] = clip("\n".join(problems))
    return {k: clip(str(v)) for k, v in found.items() if v not in (None, "")}


def gather(*, dag_id: str, run_id: str, records: Mapping[str, Mapping[str, Any] | None],
           summary: Mapping[str, Any], params: Mapping[str, Any]) -> RunFacts:
    """The facts of one run: params, tags and each stage's data."""
    present = {t: r for t, r in records.items() if isinstance(r, Mapping)}
    stages = tuple(_stage(t, r) for t, r in present.items()
                   if t != "release_gate" and r.get("status_path"))
    outcome = str(summary.get("outcome") or "incomplete")
    fingerprint = hashlib.sha256(json.dumps(
        {"records": present, "outcome": outcome, "reasons": summary.get("reasons"),
         "params": params}, sort_keys=True, default=str).encode()).hexdigest()
    return RunFacts(dag_id, run_id, run_key(dag_id, run_id), fingerprint,
                    outcome in ("released", "already released"), outcome,
                    _params(records, params), _tags(dag_id, run_id, records, summary, stages),
                    stages)
