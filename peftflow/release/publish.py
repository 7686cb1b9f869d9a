"""Publish a gated adapter: verify every input, copy it into a new version folder atomically.

The release is built in `<profile>/.tmp-<version>-<pid>/` and renamed into place in one step,
so a crash leaves no half release. Versions are allocated under a per-profile lock and never
overwritten; releasing a run (or an adapter) that is already released returns that release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow.errors import ConfigError, GateBlocked, IntegrityError, MissingInputError
from peftflow.release import gate, lineage, registry, report
from peftflow.release.request import ReleaseRequest
from peftflow.store import audit
from peftflow.store import status_record as status
from peftflow.store.hashing import sha256_file
from peftflow.store.status_record import FileRef

__all__ = ["ReleaseRequest", "ReleaseResult", "audit_event", "publish"]

LOCK_TIMEOUT_S = 1800.0  # a merged model of several GB may take minutes to copy


@dataclass(frozen=True)
class ReleaseResult:
    release: registry.ReleaseManifest
    noop: bool
    consumed: tuple[FileRef, ...]  # every input verified against its recorded hash


def _upstream(path: Path, stage: str) -> dict[str, Any]:
    doc = status.read(path)
    if doc["stage"] != stage:
        raise ConfigError(f"{path}: is the status of {doc['stage']!r}, not {stage!r}; pass the "
                          f"{stage} output folder")
    if doc["status"] != "success":
        raise MissingInputError(f"{path}: {stage} ended with status {doc['status']!r}; a "
                                "release needs a successful run of every stage")
    return doc


def _output(doc: dict[str, Any], name: str, where: Path, required: bool = True) -> FileRef | None:
    ref = status.outputs_of(doc).get(name)
    if ref is None and required:
        raise MissingInputError(f"{where}: {doc['stage']} lists no output {name!r}; rerun it")
    return ref


def _copy_verified(ref: FileRef, dest: Path) -> None:
    """Copy and hash in one pass, so a file changed after verify() is still caught."""
    digest = hashlib.sha256()
    with open(ref.path, "rb") as src, open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != ref.sha256:
        raise IntegrityError(f"{ref.path}: changed while it was being released ({ref.name}); "
                             "nothing was released. Rerun the stage that produced it")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _profile_copy(req: ReleaseRequest) -> FileRef:
    """The profile YAML as it was loaded: the release keeps a copy, since the file may change."""
    ref = FileRef.of("profile", req.profile.path)
    if ref.sha256 != req.profile.sha256:
        raise IntegrityError(f"{ref.path}: the profile changed while it was being released "
                             f"(loaded as {req.profile.sha256[:12]}..., now {ref.sha256[:12]}"
                             "...); nothing was released. Rerun release_adapter")
    return ref


def _gather(req: ReleaseRequest) -> tuple[dict[str, dict[str, Any]], dict[str, FileRef]]:
    docs = {
        "prepare_dataset": _upstream(req.prepare_status, "prepare_dataset"),
        "train_adapter": _upstream(req.train_status, "train_adapter"),
        "evaluate_adapter": _upstream(req.eval_status, "evaluate_adapter"),
    }
    where = {"prepare_dataset": req.prepare_status, "train_adapter": req.train_status,
             "evaluate_adapter": req.eval_status}
    # loss_data.jsonl travels with the release so that `peftflow compare` can overlay the
    # curves of two releases after the run folders are cleaned up.
    wanted = [("prepare_dataset", "quality", True), ("train_adapter", "adapter", True),
              ("train_adapter", "loss_curve", False), ("train_adapter", "loss_data", False),
              ("evaluate_adapter", "metrics", True),
              ("evaluate_adapter", "verdict", True), ("evaluate_adapter", "eval_chart", False)]
    refs: dict[str, FileRef] = {}
    for stage, name, required in wanted:
        ref = _output(docs[stage], name, where[stage], required)
        if ref is not None:
            refs[name] = ref
    refs["profile"] = _profile_copy(req)
    if req.merged is not None:
        recorded = _output(docs["evaluate_adapter"], "merged_model", req.eval_status, False)
        same = recorded is not None and Path(recorded.path) == req.merged.resolve()
        refs["merged_model"] = recorded if same and recorded else FileRef.of("merged_model",
                                                                             req.merged)
    for ref in refs.values():
        ref.verify()
    return docs, refs


def _check_consistency(decision: gate.GateDecision, refs: dict[str, FileRef],
                       gate_path: Path, profile: str) -> None:
    """The gate judged this run's files, and the verdict judged this adapter and metrics."""
    for name in ("quality", "verdict"):
        if decision.evidence_sha(name) != refs[name].sha256:
            raise IntegrityError(f"{gate_path}: the gate decided on a different {name} file "
                                 f"than {refs[name].path} of this run; rerun the gate")
    verdict = json.loads(Path(refs["verdict"].path).read_text(encoding="utf-8"))
    if verdict.get("profile") != profile:
        raise IntegrityError(f"{refs['verdict'].path}: evaluated profile "
                             f"{verdict.get('profile')!r}, but --profile is {profile!r}")
    for key, role in (("adapter_sha256", "adapter"), ("metrics_sha256", "metrics")):
        if verdict.get(key) != refs[role].sha256:
            judged = str(verdict.get(key))[:12]
            raise IntegrityError(f"{refs['verdict'].path}: judged {role} {judged}... but this "
                                 f"run's {role} is {refs[role].sha256[:12]}...; rerun "
                                 "evaluate_adapter")


def publish(req: ReleaseRequest) -> ReleaseResult:
    """Release the run's adapter, or return the existing release of this run (noop)."""
    decision = gate.read_decision(req.gate_path)
    if not decision.release:
        registry.record_block(decision, req.profile.name, req.dag_id, req.run_id,
                              try_number=req.try_number, root=req.root)  # once per decision
        raise GateBlocked("the release gate blocked this release:\n  - "
                          + "\n  - ".join(decision.reasons or ("no reason recorded",)))
    if req.version is not None and not registry.VERSION_RE.match(req.version):
        raise ConfigError(f"--version {req.version!r}: use letters, digits, '.', '_', '-' "
                          "(at most 64), e.g. r0007 or 2026.11.1")
    docs, refs = _gather(req)
    _check_consistency(decision, refs, req.gate_path, req.profile.name)
    facts = lineage.collect(req.profile, req.spec_path, docs, refs)
    consumed = tuple(refs.values())
    folder = registry.profile_dir(req.profile.name, req.root)
    folder.mkdir(parents=True, exist_ok=True)
    with audit.locked(folder / ".release", timeout=LOCK_TIMEOUT_S):
        for stale in folder.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash; we hold the lock
        existing = registry.list_releases(req.profile.name, req.root)
        for old in existing:
            if (old.dag_id, old.run_id) == (req.dag_id, req.run_id) or \
                    old.adapter_sha256 == refs["adapter"].sha256:
                return ReleaseResult(old, True, consumed)
        version = req.version or registry.next_version(existing, folder)
        final = folder / version
        if final.exists():
            raise ConfigError(f"{final}: version {version} already exists and versions are "
                              "never overwritten; choose another --version or leave it out")
        tmp = folder / f".tmp-{version}-{os.getpid()}"
        tmp.mkdir()
        try:
            _build(tmp, req, version, decision, refs, facts)
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ReleaseResult(registry.load_manifest(final / registry.MANIFEST), False, consumed)


def _build(tmp: Path, req: ReleaseRequest, version: str, decision: gate.GateDecision,
           refs: dict[str, FileRef], facts: dict[str, Any]) -> None:
    names = {"adapter": "adapter.pth", "merged_model": "merged_model.pth",
             "metrics": "metrics.json", "verdict": "verdict.json", "quality": "quality.json",
             "loss_curve": "loss_curve.png", "loss_data": "loss_data.jsonl",
             "eval_chart": "eval_chart.png", "profile": "profile.yaml"}
    files: dict[str, str] = {}
    for role, ref in refs.items():
        _copy_verified(ref, tmp / names[role])
        files[role] = names[role]
    if "eval_chart" in files:  # the release's own chart, titled with its version; before hashing
        report.render_eval_chart(tmp, files, f"{req.profile.name} {version}")
    shutil.copyfile(req.gate_path, tmp / "gate_decision.json")
    files["gate_decision"] = "gate_decision.json"
    doc = lineage.manifest(req, version, decision, refs, facts, files)
    doc["files_sha256"] = {name: sha256_file(tmp / name) for name in sorted(files.values())}
    text = report.render(doc)
    with open(tmp / report.REPORT, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    doc["files"]["report"] = report.REPORT
    doc["files_sha256"][report.REPORT] = sha256_file(tmp / report.REPORT)
    lineage.write_manifest(doc, tmp / registry.MANIFEST)
    for item in tmp.iterdir():
        item.chmod(0o444)  # a release is immutable; make accidental edits fail loudly


def audit_event(result: ReleaseResult, *, dag_id: str, run_id: str, task_id: str,
                try_number: int | None = None, actor: str | None = None,
                duration_s: float | None = None) -> dict[str, Any]:
    """The audit event for a release (pass it to audit.append_event)."""
    release = result.release
    return {
        "event": "release_noop" if result.noop else "release_published",
        "dag_id": dag_id, "run_id": run_id, "task_id": task_id, "try_number": try_number,
        "actor": actor, "stage": "release_adapter", "duration_s": duration_s,
        "outcome": "noop" if result.noop else "success", "verdict": "released",
        "inputs": [{"name": r.name, "sha256": r.sha256} for r in result.consumed],
        "outputs": [{"name": "release_manifest", "sha256": sha256_file(release.manifest_path)},
                    {"name": "adapter_release", "sha256": release.adapter_sha256}],
        "details": {"profile": release.profile, "version": release.version,
                    "release_dir": str(release.dir), "released_by_run": release.run_id},
    }
