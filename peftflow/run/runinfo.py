"""What a task needs to know about its DAG run, taken from the Airflow context once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftflow import settings

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")

if TYPE_CHECKING:
    from airflow.sdk import Context


def safe_segment(value: str) -> str:
    """A run id as one safe folder name (run ids contain ':' and '+')."""
    cleaned = _UNSAFE.sub("_", value).strip(".") or "run"
    return cleaned[:200]


@dataclass(frozen=True)
class RunInfo:
    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    actor: str  # the triggering user, or what started the run (scheduler, asset)
    run_type: str
    params: dict[str, Any]
    asset_extra: dict[str, Any]  # extra of the asset event that started the run, if any

    def run_dir(self) -> Path:
        """<artifact root>/<dag_id>/<run_id>/: the one place a run's artifacts live."""
        return settings.get().artifact_root / self.dag_id / safe_segment(self.run_id)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir() / stage

    @property
    def note(self) -> str:
        return str(self.params.get("note") or "")


def from_context(context: Context) -> RunInfo:
    ti = context["ti"]
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run, "run_type", "") or "")
    user = getattr(dag_run, "triggering_user_name", None)
    actor = user or {"scheduled": "scheduler", "asset_triggered": "asset",
                     "backfill": "backfill"}.get(run_type.split(".")[-1].lower(), run_type or "?")
    extra: dict[str, Any] = {}
    for event in context.get("triggering_asset_events", {}).values() if hasattr(
            context.get("triggering_asset_events", {}), "values") else ():
        for item in event:
            extra = dict(getattr(item, "extra", None) or {})  # the latest event wins
    params = dict(context.get("params") or {})
    return RunInfo(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        task_id=ti.task_id,
        try_number=int(getattr(ti, "try_number", 1) or 1),
        actor=str(actor),
        run_type=run_type,
        params=params,
        asset_extra=extra,
    )
