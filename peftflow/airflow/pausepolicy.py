"""Whether each DAG is paused: the spec's `start_paused`, applied by setup, then left to people.

Airflow applies `is_paused_upon_creation` only when it first sees a DAG. Setup applies the
spec's value again when it differs from the value setup last applied (recorded per DAG in
AIRFLOW_HOME/peftflow_pause_policy.json), so changing `start_paused` in a spec takes effect on
the next `./setup_airflow.sh`, while a pause or unpause done by hand in the UI or CLI is kept
as long as the spec's value stays the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peftflow import settings
from peftflow.spec.model import Spec, SpecKind
from peftflow.store import atomic

STATE_FILE = "peftflow_pause_policy.json"


@dataclass(frozen=True)
class PauseState:
    dag_id: str
    paused: bool | None  # None: Airflow does not know the DAG (yet)
    changed: bool  # setup just applied the spec's value
    line: str


def _why(spec: Spec) -> str:
    if spec.kind is SpecKind.RETRAIN:
        return f"starts a run on each new {spec.dataset_name} version"
    if spec.schedule.enabled:
        return f"cron {spec.schedule.cron} {spec.schedule.timezone}"
    return "runs when triggered"


def describe(spec: Spec, paused: bool | None, changed: bool) -> str:
    if paused is None:
        return (f"{spec.dag_id}: not registered in Airflow yet (run `airflow dags reserialize`, "
                "then this setup again)")
    how = "applied from the spec" if changed else (
        "as the spec says" if paused == spec.start_paused else
        f"set by hand; the spec says {'paused' if spec.start_paused else 'active'}")
    if paused:
        return (f"{spec.dag_id}: paused ({how}; {_why(spec)}): nothing starts until "
                f"`airflow dags unpause {spec.dag_id}`")
    return f"{spec.dag_id}: active ({how}; {_why(spec)})"


def apply(specs: list[Spec], state_file: Path | None = None) -> list[PauseState]:
    """Apply each spec's `start_paused` where it changed since setup last applied it."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    path = state_file or settings.get().airflow_home / STATE_FILE
    try:
        applied = json.loads(path.read_text(encoding="utf-8"))
        applied = applied if isinstance(applied, dict) else {}
    except (OSError, ValueError):
        applied = {}
    found: list[PauseState] = []
    with create_session() as session:
        for spec in specs:
            model = session.scalar(select(DagModel).where(DagModel.dag_id == spec.dag_id))
            if model is None:
                found.append(PauseState(spec.dag_id, None, False, describe(spec, None, False)))
                continue
            changed = applied.get(spec.dag_id) != spec.start_paused
            if changed:
                model.is_paused = spec.start_paused
                applied[spec.dag_id] = spec.start_paused
            paused = bool(model.is_paused)
            found.append(PauseState(spec.dag_id, paused, changed,
                                    describe(spec, paused, changed)))
    atomic.write_json(path, applied)
    return found
