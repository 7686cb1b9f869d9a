"""What one DAG run did, told where users look: the last task's log and the run's note.

Built at the end of every run (the `run_summary` teardown task runs after success, a blocked
gate and a failure alike) from two records that already exist: the audit trail's events of
this run (ran, reused, failed, blocked, with exit codes and reasons) and the stages' XCom
records (outputs, the run a reused result came from, the release version). Task states from
Airflow fill in the tasks that never started (upstream failed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from peftflow.airflow.expand import GATE_TASK, task_order

# the DAG's tasks in order, the gate before the release (as expand.dag_config builds them)

NOTE_MAX = 1000  # Airflow's limit for a DagRun note (PATCH .../dagRuns/{id})


@dataclass(frozen=True)
class StageLine:
    task_id: str
    outcome: str  # ran | reused | failed | retrying | passed | overridden | blocked | not run
    detail: str

    def text(self) -> str:
        return f"{self.task_id}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class RunSummary:
    dag_id: str
    run_id: str
    outcome: str  # released | already released | blocked | failed | incomplete
    headline: str
    stages: tuple[StageLine, ...]
    reasons: tuple[str, ...]
    dataset: str | None
    release: str | None
    actor: str
    note: str

    def log_lines(self) -> list[str]:
        """The summary as the task log shows it (one fact a line)."""
        lines = [f"RUN SUMMARY {self.dag_id} / {self.run_id}: {self.headline}"]
        lines += [f"  {s.text()}" for s in self.stages]
        lines += [f"  gate reason: {r}" for r in self.reasons]
        if self.dataset:
            lines.append(f"  dataset: {self.dataset}")
        lines.append(f"  {self.started_by().lower()}" + (f", note: {self.note!r}"
                                                          if self.note else ", no note"))
        return lines

    def started_by(self) -> str:
        """Who or what started the run, as a sentence start."""
        return {"asset": "Started by a dataset event", "scheduler": "Started by the schedule",
                "backfill": "Started by a backfill"}.get(self.actor,
                                                         f"Triggered by {self.actor}")

    def note_markdown(self, limit: int = NOTE_MAX) -> str:
        """The DagRun note (Markdown in the UI), cut to Airflow's length limit."""
        parts = [f"**{self.headline}**", ""]
        parts += [f"- {s.text()}" for s in self.stages]
        if self.reasons:
            parts += ["", "Gate:"] + [f"- {r}" for r in self.reasons]
        parts.append("")
        if self.dataset:
            parts.append(f"Dataset: {self.dataset}.")
        parts.append(f"{self.started_by()}" + (f": {self.note}" if self.note else "."))
        text = "\n".join(parts)
        return text if len(text) <= limit else text[: limit - 2] + " …"

    def as_dict(self) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "outcome": self.outcome,
                "headline": self.headline, "reasons": list(self.reasons),
                "dataset": self.dataset, "release": self.release, "actor": self.actor,
                "note": self.note,
                "stages": [{"task_id": s.task_id, "outcome": s.outcome, "detail": s.detail}
                           for s in self.stages]}


OUTCOME_EVENTS = frozenset({"task_succeeded", "task_reused", "task_failed", "gate_passed",
                            "gate_override", "gate_blocked"})


def _last_events(events: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The last outcome event of each task (a retry's success replaces its failure)."""
    last: dict[str, Mapping[str, Any]] = {}
    for event in events:
        task = event.get("task_id")
        if isinstance(task, str) and event.get("event") in OUTCOME_EVENTS:
            last[task] = event
    return last


def _seconds(value: Any) -> str:
    return f"{float(value):.1f} s" if isinstance(value, int | float) else ""


def _failure(event: Mapping[str, Any]) -> str:
    details = event.get("details") or {}
    if "exit_code" in details:
        return f"exit {details['exit_code']} {details.get('class', '')}".strip()
    if details.get("error"):
        return str(details["error"]).splitlines()[0][:200]
    return str(event.get("outcome") or "")


def _stage_line(task: str, event: Mapping[str, Any] | None, record: Mapping[str, Any] | None,
                state: str | None) -> StageLine:
    kind = event.get("event") if event else None
    if kind == "task_reused":
        source = (record or {}).get("reused_from") or "an earlier run"
        return StageLine(task, "reused", f"nothing ran; result of run {source}")
    if kind == "task_succeeded":
        return StageLine(task, "ran", _seconds(event.get("duration_s") if event else None))
    if kind in ("gate_passed", "gate_override"):
        return StageLine(task, "overridden" if kind == "gate_override" else "passed", "")
    if kind == "gate_blocked":
        return StageLine(task, "blocked", "")
    if kind == "task_failed":
        retrying = state in ("up_for_retry", "queued", "scheduled", "running")
        return StageLine(task, "retrying" if retrying else "failed", _failure(event or {}))
    if state == "success":
        return StageLine(task, "ran", "")
    if state in ("upstream_failed", "skipped", "removed", None):
        return StageLine(task, "not run", "upstream failed" if state == "upstream_failed"
                         else (state or "no record"))
    return StageLine(task, str(state), "")


def build(*, dag_id: str, run_id: str, actor: str, note: str,
          events: Iterable[Mapping[str, Any]], records: Mapping[str, Mapping[str, Any] | None],
          states: Mapping[str, str | None]) -> RunSummary:
    """The summary of one run from its audit events, XCom records and task states."""
    last = _last_events(events)
    stages = tuple(_stage_line(t, last.get(t), records.get(t), states.get(t))
                   for t in task_order())
    gate_event = last.get(GATE_TASK) or {}
    reasons = tuple(str(r) for r in (gate_event.get("details") or {}).get("reasons", [])
                    if gate_event.get("event") == "gate_blocked")
    if gate_event.get("event") == "gate_blocked" and not reasons:
        error = (gate_event.get("details") or {}).get("error")
        reasons = (f"the gate could not read its inputs: {error}",) if error else ()
    prepare = (records.get("prepare_dataset") or {}).get("metrics") or {}
    dataset = (f"{prepare['dataset_name']} {prepare['dataset_version']}"
               if prepare.get("dataset_name") else None)
    release_metrics = (records.get("release_adapter") or {}).get("metrics") or {}
    release = None
    by_outcome = {s.task_id: s.outcome for s in stages}
    if release_metrics.get("version"):
        release = f"{release_metrics.get('profile')} {release_metrics['version']}"
        if release_metrics.get("noop"):
            outcome, headline = "already released", (f"No new release: this adapter is "
                                                     f"already released as {release}")
        else:
            outcome, headline = "released", f"Released {release}"
        if by_outcome.get(GATE_TASK) == "overridden":
            headline += " (gate overridden)"
    elif by_outcome.get(GATE_TASK) == "blocked":
        outcome, headline = "blocked", "Release blocked by the gate"
    elif failed := [s for s in stages if s.outcome == "failed"]:
        outcome, headline = "failed", f"Failed in {failed[0].task_id} ({failed[0].detail})"
    else:
        outcome, headline = "incomplete", "No release: the run did not reach release_adapter"
    reused = sum(s.outcome == "reused" for s in stages)
    ran = sum(s.outcome == "ran" for s in stages)
    headline += f"; {ran} stage(s) ran, {reused} reused"
    return RunSummary(dag_id, run_id, outcome, headline, stages, reasons, dataset, release,
                      actor, note)
