"""Lineage of a release: what it was built from, gathered into release_manifest.json."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftflow import __version__, settings
from peftflow.errors import IntegrityError, MissingInputError, PeftflowError
from peftflow.release import registry
from peftflow.store import atomic, schemas
from peftflow.store.hashing import sha256_file
from peftflow.store.status_record import FileRef, utc_now
from peftflow.train.training_profile import Profile

if TYPE_CHECKING:
    from peftflow.release.gate import GateDecision
    from peftflow.release.request import ReleaseRequest


def cached_sha256(path: Path) -> str:
    """sha256 of a large file, cached in `<file>.sha256` keyed on size and mtime."""
    stat = path.stat()
    key = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = Path(f"{path}.sha256")
    try:
        cached = json.loads(sidecar.read_text(encoding="utf-8"))
        if {k: cached.get(k) for k in key} == key and len(cached.get("sha256", "")) == 64:
            return str(cached["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    with contextlib.suppress(OSError, PeftflowError):  # read-only models: a rehash next time
        atomic.write_json(sidecar, {**key, "sha256": digest})
    return digest


def git_state(root: Path) -> dict[str, Any]:
    """Commit of the project checkout and whether tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    porcelain = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if porcelain is None else bool(porcelain)}


def _read_json(ref: FileRef) -> dict[str, Any]:
    try:
        doc = json.loads(Path(ref.path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{ref.path}: {ref.name} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{ref.path}: {ref.name} is not a JSON object")
    return doc


def _base_model(profile: Profile, train: dict[str, Any]) -> dict[str, Any]:
    path = profile.model.base_model_path().resolve()
    if not path.is_file():
        raise MissingInputError(f"{path}: base model of profile {profile.name!r} not found; "
                                "the release records its hash, so it must still exist")
    digest = cached_sha256(path)
    used = next((i for i in train.get("inputs", []) if i["name"] == "base_model"), None)
    if used is not None and used["sha256"] != digest:
        raise IntegrityError(f"{path}: the base model changed since training (trained on "
                             f"{used['sha256'][:12]}..., now {digest[:12]}...); retrain")
    return {"path": str(path), "sha256": digest, "bytes": path.stat().st_size}


def baseline_release(eval_status: dict[str, Any]) -> dict[str, Any] | None:
    """The release evaluate_adapter compared with (its `baseline_metrics` input), or None.

    The evaluation read `<releases>/<profile>/<version>/metrics.json`; the release manifest
    beside it names the release, and its recorded hash of metrics.json must be the one the
    evaluation read, so the record cannot name a release other than the one compared with.
    """
    used = next((i for i in eval_status.get("inputs", []) if i["name"] == "baseline_metrics"),
                None)
    if used is None:
        return None
    metrics = Path(used["path"])
    problem = "there is no release manifest beside it"
    try:
        release = registry.load_manifest(metrics.parent / registry.MANIFEST)
    except (MissingInputError, IntegrityError) as exc:
        problem = str(exc).splitlines()[-1]
    else:
        if release.metrics_path == metrics and \
                release.doc["files_sha256"].get(metrics.name) == used["sha256"]:
            return {"profile": release.profile, "version": release.version,
                    "metrics_sha256": used["sha256"]}
        problem = f"its hash differs from the metrics.json of release {release.profile} " \
                  f"{release.version}"
    raise IntegrityError(f"{metrics}: evaluate_adapter compared with these baseline metrics, "
                         f"but they are not an intact release's ({problem}); a release must "
                         "name the release it was compared with. Rerun evaluate_adapter")


def collect(profile: Profile, spec_path: Path, docs: dict[str, dict[str, Any]],
            refs: dict[str, FileRef]) -> dict[str, Any]:
    """Everything the manifest needs besides the gate and the copied files."""
    spec = spec_path.resolve()
    if not spec.is_file():
        raise MissingInputError(f"{spec}: DAG spec not found (--spec)")
    prepare, train = docs["prepare_dataset"], docs["train_adapter"]
    quality = _read_json(refs["quality"])
    metrics = _read_json(refs["metrics"])
    bad = schemas.problems(metrics, "eval_metrics", refs["metrics"].path)
    if bad:
        raise IntegrityError(f"{bad[0]}\n{refs['metrics'].path}: not valid evaluation metrics "
                             "(schemas/eval_metrics.schema.json); rerun evaluate_adapter")
    qdata, pmetrics, tmetrics = quality.get("dataset", {}), prepare["metrics"], train["metrics"]
    outputs = [o for o in prepare["outputs"] if o["name"] in ("bin", "idx")]
    return {
        "base_model": _base_model(profile, train),
        "baseline": baseline_release(docs["evaluate_adapter"]),
        "spec": {"path": str(spec), "sha256": sha256_file(spec)},
        "project": {**git_state(settings.get().project_root), "peftflow_version": __version__},
        "metrics": metrics["suites"],
        "dataset": {
            "name": qdata.get("name") or pmetrics.get("dataset_name") or "unknown",
            "version": str(qdata.get("version") or pmetrics.get("dataset_version") or "unknown"),
            "manifest_sha256": qdata.get("manifest_sha256") or pmetrics.get("manifest_sha256"),
            "data_sha256": qdata.get("data_sha256"),
            "quality_verdict": quality.get("verdict"),
            "files": [{"name": f["name"], "sha256": f["sha256"], "bytes": f["bytes"]}
                      for f in prepare["inputs"] + outputs],
        },
        "training": {
            "backend": str(tmetrics.get("backend") or profile.backend),
            "peft_method": str(profile.peft.method),
            "lora_r": profile.peft.lora.r, "lora_alpha": profile.peft.lora.alpha,
            "final_loss": tmetrics.get("final_loss"),
            "steps": tmetrics.get("steps", tmetrics.get("global_step")),
            "epochs": profile.training.epoch_count, "ctx_len": profile.model.ctx_len,
        },
        "stages": {stage: {"status_started_at": doc["started_at"],
                           "status_finished_at": doc["finished_at"],
                           "duration_s": doc.get("duration_s"), "tools": doc["tools"]}
                   for stage, doc in docs.items()},
    }


def _file_entry(ref: FileRef, name: str) -> dict[str, Any]:
    return {"file": name, "sha256": ref.sha256, "bytes": ref.bytes, "source": ref.path}


def manifest(req: ReleaseRequest, version: str, decision: GateDecision,
             refs: dict[str, FileRef], facts: dict[str, Any],
             files: dict[str, str]) -> dict[str, Any]:
    profile = req.profile
    doc: dict[str, Any] = {
        "schema_version": 1,
        "profile": {"name": profile.name, "path": str(profile.path), "sha256": profile.sha256},
        "version": version,
        "created_at": utc_now(),
        "adapter": _file_entry(refs["adapter"], files["adapter"]),
        "base_model": facts["base_model"],
        "dataset": facts["dataset"],
        "spec": facts["spec"],
        "project": facts["project"],
        "training": facts["training"],
        "metrics": facts["metrics"],
        "baseline": facts["baseline"],
        "gate": {
            "decision_id": decision.decision_id, "release": decision.release,
            "overridden": decision.overridden, "reasons": list(decision.reasons),
            "eval_verdict": decision.eval_verdict, "quality_verdict": decision.quality_verdict,
            "allow_warn": decision.allow_warn, "decided_at": decision.decided_at,
            "override": None if decision.override is None else {
                "actor": decision.override.actor, "reason": decision.override.reason},
            "eval_rules": list(decision.eval_rules),
            "checks": [{"check": c.check, "outcome": c.outcome, "detail": c.detail}
                       for c in decision.checks],
        },
        "airflow": {"dag_id": req.dag_id, "run_id": req.run_id, "try_number": req.try_number},
        "stages": facts["stages"],
        "files": dict(files),
    }
    if "merged_model" in refs:
        doc["merged_model"] = _file_entry(refs["merged_model"], files["merged_model"])
    return doc


def write_manifest(doc: dict[str, Any], path: Path) -> None:
    schemas.check(doc, "release_manifest", str(path))
    atomic.write_json(path, doc)
