"""What one stage task will run: its argv, its inputs with their hashes, its cache key.

Built from the validated spec, the run's params and the upstream stages' records (XCom), by
the stage's entry in the stage table (peftflow.run.stages). Every value reaches the script as
its own argv element; nothing is ever joined into shell text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from peftflow import __version__, settings
from peftflow.run import stages
from peftflow.run.inputs import (
    effective_manifest_path,
    effective_profile,
    effective_profile_path,
    profile_name,
    release_baseline,
    upstream_outputs,
)
from peftflow.run.runinfo import RunInfo
from peftflow.spec.model import Spec
from peftflow.store.hashing import sha256_file
from peftflow.store.status_record import FileRef

__all__ = ["CODE_SUFFIXES", "PINNED", "StagePlan", "build", "code_version",
           "effective_manifest_path", "effective_profile", "effective_profile_path",
           "profile_name", "record", "release_baseline", "upstream_outputs"]

CODE_SUFFIXES = (".py", ".c")  # .c too: the C tokenizer decides prepare_dataset's token ids
# External code whose version changes what a stage computes; the RWKV-PEFT commit is the one
# the argv builder targets (train/rwkv_peft.py), recorded here so the key names it.
PINNED = ("torch", "rwkv", "pyrwkv-tokenizer", "numpy")


@dataclass(frozen=True)
class StagePlan:
    stage: str
    argv: list[str]
    out_dir: Path
    inputs: dict[str, FileRef]
    config: dict[str, Any] = field(default_factory=dict)

    def cache_key(self) -> str:
        payload = {
            "stage": str(self.stage),
            "inputs": sorted((name, ref.sha256) for name, ref in self.inputs.items()),
            "config": self.config,
            "code": code_version(self.stage),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def code_version(stage: str) -> str:
    """Every source file of the package, the stage's script and the pinned external versions.

    The whole package, not a list per stage: a stage also runs the status records, the
    atomic writes, the schemas and the profile loader, and a hand-kept list goes stale (a
    change in a shared module must never reuse results computed by the old code).
    """
    from peftflow.train.rwkv_peft import SUPPORTED_COMMIT

    root = settings.get().project_root
    digest = hashlib.sha256(__version__.encode())
    package = root / "peftflow"
    paths = sorted(p for p in package.rglob("*")
                   if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts)
    paths.append(settings.get().scripts_dir / stages.get(stage).script)
    for path in paths:
        if path.is_file():
            digest.update(str(path.relative_to(root) if path.is_relative_to(root)
                              else path.name).encode())
            digest.update(sha256_file(path).encode())
    for dist in PINNED:
        digest.update(f"{dist}=={_version(dist)}".encode())
    digest.update(f"rwkv-peft@{SUPPORTED_COMMIT}".encode())
    return digest.hexdigest()


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
        # a GPU stage's lease (host, device ids): the next GPU stage prefers the same cards
        **({"devices": doc["devices"]} if doc.get("devices") else {}),
    }


def build(stage: str, spec: Spec, run: RunInfo, upstream: dict[str, dict[str, Any]],
          extra: dict[str, Any] | None = None) -> StagePlan:
    """The plan of `stage` in this run; raises ConfigError/IntegrityError on bad inputs."""
    definition = stages.get(stage)
    script = str(settings.get().scripts_dir / definition.script)
    out = run.stage_dir(definition.name)
    prof = effective_profile(spec, run)  # the one load of the profile in this task
    facts = dict(extra or {})
    if definition.reads_baseline:
        facts["baseline_metrics"] = release_baseline(spec, prof)
    ctx = stages.StageContext(spec=spec, run=run, profile=prof, upstream=upstream, extra=facts)
    own = definition.args(ctx)
    inputs: dict[str, FileRef] = {"profile": FileRef.of("profile", prof.path), **own.inputs}
    config: dict[str, Any] = {"profile_sha256": prof.sha256, **own.config}
    argv = ["bash", script, "--profile", str(prof.path), "--out", str(out), *own.argv]
    return StagePlan(definition.name, argv, out, inputs, config)
