"""Where a stage's inputs come from: the run's chosen profile and dataset, upstream records.

Shared by the stage table's argv builders (peftflow.run.stages) and by the plan; every path
that a trigger or an asset event chooses is checked against what the spec allows here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import ConfigError, IntegrityError, MissingInputError
from peftflow.run.runinfo import RunInfo
from peftflow.spec.model import Spec, SpecKind
from peftflow.store import paths
from peftflow.store.hashing import cached_sha256
from peftflow.store.status_record import FileRef
from peftflow.train import training_profile as profile


def effective_profile_path(spec: Spec, run: RunInfo) -> str:
    chosen = str(run.params.get("training_profile") or spec.training_profile)
    if chosen not in (spec.training_profile, *spec.trigger.allowed_profiles):
        raise ConfigError(f"training_profile {chosen!r} is not allowed by {spec.path.name}; "
                          f"allowed: {[spec.training_profile, *spec.trigger.allowed_profiles]}")
    return chosen


def effective_profile(spec: Spec, run: RunInfo) -> profile.Profile:
    """The training profile this run uses, loaded (once per task: pass it on, never reload)."""
    chosen = effective_profile_path(spec, run)
    return profile.load(spec.profile_paths[chosen], chosen)


def profile_name(spec: Spec, run: RunInfo) -> str:
    """The name of the training profile this run uses (releases are filed under it)."""
    return effective_profile(spec, run).name


def release_baseline(spec: Spec, prof: profile.Profile) -> Path | None:
    """metrics.json of the profile's current release when the spec compares against it."""
    if not spec.gate.compare_to_release:
        return None
    from peftflow.release import registry

    return registry.baseline_metrics_path(prof.name)


def effective_manifest_path(spec: Spec, run: RunInfo) -> Path:
    """The dataset version this run trains on: from the asset event for a retrain DAG."""
    if spec.kind is SpecKind.RETRAIN and run.asset_extra.get("manifest"):
        chosen = str(run.asset_extra["manifest"])
        resolved = paths.resolve_ref(chosen)
        if not paths.inside_allowed_roots(resolved):
            raise ConfigError(f"asset event manifest {chosen!r} is outside the allowed roots; "
                              "keep datasets under the project, or add their folder to "
                              "PEFTFLOW_ALLOWED_ROOTS (':'-separated) for every service")
        return resolved
    chosen = str(run.params.get("dataset_manifest") or spec.dataset_manifest)
    if chosen not in (spec.dataset_manifest, *spec.trigger.allowed_manifests):
        raise ConfigError(f"dataset_manifest {chosen!r} is not allowed by {spec.path.name}; "
                          f"allowed: {[spec.dataset_manifest, *spec.trigger.allowed_manifests]}")
    return spec.manifest_paths[chosen]


def upstream_outputs(record: dict[str, Any] | None, stage: str) -> dict[str, FileRef]:
    if not record or "outputs" not in record:
        raise IntegrityError(f"no record from upstream stage {stage}; it did not succeed "
                             "in this run (clear it to rerun)")
    return {name: FileRef(name=name, **ref) for name, ref in record["outputs"].items()}


def ref(name: str, path: Path) -> FileRef:
    return FileRef.of(name, path)


def base_model(prof: profile.Profile) -> FileRef:
    path = prof.model.base_model_path()
    if not path.is_file():
        raise MissingInputError(f"base model {path} not found (profile {prof.path.name}); "
                                "run `peftflow doctor` to check the training machine")
    cache = settings.get().artifact_root / "_hashcache"
    return FileRef("base_model", str(path.resolve()), cached_sha256(path, cache),
                   path.stat().st_size)


