"""What the release stage is asked to publish: the run, its stage folders and its gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftflow.train.training_profile import Profile


@dataclass(frozen=True)
class ReleaseRequest:
    profile: Profile
    spec_path: Path
    prepare_status: Path  # folder (or status.json) of prepare_dataset
    train_status: Path
    eval_status: Path
    gate_path: Path  # gate_decision.json
    dag_id: str
    run_id: str
    try_number: int
    version: str | None = None
    merged: Path | None = None
    root: Path | None = None  # releases root; None: settings.get().releases_root
