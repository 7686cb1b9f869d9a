"""What one stage task will run: its argv, its inputs with their hashes, its cache key.

Built from the validated spec, the run's params and the upstream stages' records (XCom).
Every value reaches the script as its own argv element; nothing is ever joined into shell text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftflow import __version__, settings
from peftflow.errors import ConfigError, IntegrityError
from peftflow.run.runinfo import RunInfo
from peftflow.spec import training_profile as profile
from peftflow.spec import validate
from peftflow.spec.model import Spec, SpecKind, Stage
from peftflow.store.hashing import cached_sha256, sha256_file
from peftflow.store.status_record import FileRef

SCRIPTS = {s: f"{s.value}.sh" for s in Stage}
# Code each stage runs, for the cache key: a change in any of these invalidates old results.
STAGE_CODE = {
    Stage.PREPARE: ("peftflow/stages/prepare.py", "peftflow/dataset"),
    Stage.TRAIN: ("peftflow/stages/train.py", "peftflow/train"),
    Stage.EVALUATE: ("peftflow/stages/evaluate.py", "peftflow/evaluate"),
    Stage.RELEASE: ("peftflow/stages/release.py", "peftflow/release"),
}


CODE_SUFFIXES = (".py", ".c")


@dataclass(frozen=True)
class StagePlan:
    stage: Stage
    argv: list[str]
    out_dir: Path
    inputs: dict[str, FileRef]
    config: dict[str, Any] = field(default_factory=dict)

    def cache_key(self) -> str:
        payload = {
            "stage": self.stage.value,
            "inputs": sorted((name, ref.sha256) for name, ref in self.inputs.items()),
            "config": self.config,
            "code": code_version(self.stage),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def code_version(stage: Stage) -> str:
    root = settings.get().project_root
    digest = hashlib.sha256(__version__.encode())
    paths = [settings.get().scripts_dir / SCRIPTS[stage], root / "peftflow/stages/common.py"]
    for rel in STAGE_CODE[stage]:
        target = root / rel
        # .c too: the C tokenizer decides prepare_dataset's token ids
        paths.extend(sorted(p for p in target.rglob("*") if p.suffix in CODE_SUFFIXES)
                     if target.is_dir() else [target])
    for path in paths:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def effective_profile_path(spec: Spec, run: RunInfo) -> str:
    chosen = str(run.params.get("training_profile") or spec.training_profile)
    if chosen not in (spec.training_profile, *spec.trigger.allowed_profiles):
        raise ConfigError(f"training_profile {chosen!r} is not allowed by {spec.path.name}; "
                          f"allowed: {[spec.training_profile, *spec.trigger.allowed_profiles]}")
    return chosen


def profile_name(spec: Spec, run: RunInfo) -> str:
    """The name of the training profile this run uses (releases are filed under it)."""
    return profile.load(validate.resolve_ref(effective_profile_path(spec, run))).name


def release_baseline(spec: Spec, run: RunInfo) -> Path | None:
    """metrics.json of the profile's current release when the spec compares against it."""
    if not spec.gate.compare_to_release:
        return None
    from peftflow.release import registry

    return registry.baseline_metrics_path(profile_name(spec, run))


def effective_manifest_path(spec: Spec, run: RunInfo) -> Path:
    """The dataset version this run trains on: from the asset event for a retrain DAG."""
    if spec.kind is SpecKind.RETRAIN and run.asset_extra.get("manifest"):
        chosen = str(run.asset_extra["manifest"])
        resolved = validate.resolve_ref(chosen)
        if not validate.inside_allowed_roots(resolved):
            raise ConfigError(f"asset event manifest {chosen!r} is outside the allowed roots; "
                              "keep datasets under the project, or add their folder to "
                              "PEFTFLOW_ALLOWED_ROOTS (':'-separated) for every service")
        return resolved
    chosen = str(run.params.get("dataset_manifest") or spec.dataset_manifest)
    if chosen not in (spec.dataset_manifest, *spec.trigger.allowed_manifests):
        raise ConfigError(f"dataset_manifest {chosen!r} is not allowed by {spec.path.name}; "
                          f"allowed: {[spec.dataset_manifest, *spec.trigger.allowed_manifests]}")
    return validate.resolve_ref(chosen)


def record(doc: dict[str, Any], status_path: Path, key: str, reused: bool) -> dict[str, Any]:
    """The XCom a stage hands downstream: where its outputs are and their hashes."""
    return {
        "stage": doc["stage"],
        "status_path": str(status_path),
        "outputs": {o["name"]: {"path": o["path"], "sha256": o["sha256"], "bytes": o["bytes"]}
                    for o in doc["outputs"]},
        "metrics": doc.get("metrics", {}),
        "cache_key": key,
        "reused": reused,
        # the run that computed a reused result (shown in the run summary and the task log)
        "reused_from": doc.get("_run_id") if reused else None,
    }


def upstream_outputs(record: dict[str, Any] | None, stage: Stage) -> dict[str, FileRef]:
    if not record or "outputs" not in record:
        raise IntegrityError(f"no record from upstream stage {stage.value}; it did not succeed "
                             "in this run (clear it to rerun)")
    return {name: FileRef(name=name, **ref) for name, ref in record["outputs"].items()}


def _ref(name: str, path: Path) -> FileRef:
    return FileRef.of(name, path)


def _base_model(prof: profile.Profile) -> FileRef:
    path = prof.model.base_model_path()
    if not path.is_file():
        from peftflow.errors import MissingInputError

        raise MissingInputError(f"base model {path} not found (profile {prof.path.name}); "
                                "run `peftflow doctor` to check the training machine")
    cache = settings.get().artifact_root / "_hashcache"
    return FileRef("base_model", str(path.resolve()), cached_sha256(path, cache),
                   path.stat().st_size)


def build(stage: Stage, spec: Spec, run: RunInfo, upstream: dict[Stage, dict[str, Any]],
          extra: dict[str, Any] | None = None) -> StagePlan:
    """The plan of `stage` in this run; raises ConfigError/IntegrityError on bad inputs."""
    script = str(settings.get().scripts_dir / SCRIPTS[stage])
    out = run.stage_dir(stage.value)
    prof_rel = effective_profile_path(spec, run)
    prof_path = validate.resolve_ref(prof_rel)
    prof = profile.load(prof_path, prof_rel)
    inputs: dict[str, FileRef] = {"profile": _ref("profile", prof_path)}
    config: dict[str, Any] = {"profile_sha256": prof.sha256}
    argv = ["bash", script, "--profile", str(prof_path), "--out", str(out)]
    if stage is Stage.PREPARE:
        manifest = effective_manifest_path(spec, run)
        inputs["manifest"] = _ref("manifest", manifest)
        q = spec.gate.quality
        config["quality"] = q.__dict__
        argv += ["--manifest", str(manifest),
                 "--max-invalid-records", str(q.max_invalid_records),
                 "--max-duplicate-fraction", repr(q.max_duplicate_fraction),
                 "--max-over-ctx-fraction", repr(q.max_over_ctx_fraction),
                 "--allow-warn" if q.allow_warn else "--no-allow-warn"]
    elif stage is Stage.TRAIN:
        data = upstream_outputs(upstream.get(Stage.PREPARE), Stage.PREPARE)
        inputs.update({"bin": data["bin"], "idx": data["idx"], "base_model": _base_model(prof)})
        prefix = str(Path(data["bin"].path).with_suffix(""))
        argv += ["--data-prefix", prefix, "--resume"]
    elif stage is Stage.EVALUATE:
        trained = upstream_outputs(upstream.get(Stage.TRAIN), Stage.TRAIN)
        inputs.update({"adapter": trained["adapter"], "base_model": _base_model(prof)})
        argv += ["--adapter", trained["adapter"].path]
        for i, suite in enumerate(spec.eval_suites):
            suite_path = validate.resolve_ref(suite)
            inputs[f"suite:{i}"] = _ref(f"suite:{i}", suite_path)
            argv += ["--suite", str(suite_path)]
        argv += ["--min-domain-improvement", repr(spec.gate.min_domain_improvement),
                 "--max-retention-increase", repr(spec.gate.max_retention_increase)]
        config["gate"] = [spec.gate.min_domain_improvement, spec.gate.max_retention_increase]
        baseline = (extra or {}).get("baseline_metrics")
        if spec.gate.compare_to_release and baseline:
            inputs["baseline_metrics"] = _ref("baseline_metrics", Path(baseline))
            argv += ["--baseline-metrics", str(baseline),
                     "--baseline-tolerance", repr(spec.gate.release_tolerance)]
            config["release_tolerance"] = spec.gate.release_tolerance
    elif stage is Stage.RELEASE:
        dirs = {}
        for up in (Stage.PREPARE, Stage.TRAIN, Stage.EVALUATE):
            record = upstream.get(up) or {}
            upstream_outputs(record, up)  # raises when absent
            dirs[up] = str(Path(record["status_path"]).parent)
        gate_file = (extra or {}).get("gate_decision")
        if not gate_file:
            raise IntegrityError("no release gate decision in this run; the gate did not pass")
        inputs["gate"] = _ref("gate", Path(gate_file))
        inputs["spec"] = _ref("spec", spec.path)
        argv += ["--spec", str(spec.path), "--prepare-status", dirs[Stage.PREPARE],
                 "--train-status", dirs[Stage.TRAIN], "--eval-status", dirs[Stage.EVALUATE],
                 "--gate", str(gate_file), "--dag-id", run.dag_id, "--run-id", run.run_id,
                 "--try-number", str(run.try_number)]
        config["run"] = [run.dag_id, run.run_id]  # a release belongs to exactly one run
    return StagePlan(stage, argv, out, inputs, config)
