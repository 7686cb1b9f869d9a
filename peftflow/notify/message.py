"""What a notification says: built from records the run already wrote, never from templates.

One message per outcome of a run (released, release blocked, failed) and one per missed
training deadline. Text only, with facts a reader can act on without opening the UI: the
version and the metrics that passed, the gate's reasons, the stage that failed with its error
and tries, and the link to the run. Rendered as plain text here; the channels escape it for
their format (HTML for e-mail, Slack mrkdwn for webhooks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from peftflow import settings
from peftflow.spec.model import NotifyEvent, Spec

MAX_ERROR_LINES = 6


@dataclass(frozen=True)
class Message:
    event: NotifyEvent
    title: str
    lines: tuple[str, ...]
    dag_id: str
    run_id: str

    @property
    def body(self) -> str:
        return "\n".join(self.lines)

    @property
    def failure(self) -> bool:
        return self.event in (NotifyEvent.RUN_FAILED, NotifyEvent.RETRIES_EXHAUSTED,
                              NotifyEvent.RELEASE_BLOCKED, NotifyEvent.TRAINING_OVERDUE)


def run_url(dag_id: str, run_id: str, task_id: str | None = None) -> str:
    """The run (or one task of it) in the Airflow UI of this deployment."""
    s = settings.get()
    url = f"http://{s.api_host}:{s.api_port}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    return f"{url}/tasks/{quote(task_id)}" if task_id else url


def _pct(value: Any) -> str:
    return f"{float(value):+.2%}" if isinstance(value, int | float) else "?"


def _read_json(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _output_path(record: Mapping[str, Any] | None, name: str) -> str | None:
    found = ((record or {}).get("outputs") or {}).get(name) or {}
    return found.get("path") if isinstance(found, dict) else None


def suite_lines(eval_record: Mapping[str, Any] | None,
                decision: Mapping[str, Any]) -> list[str]:
    """One line per suite: loss base -> adapted, the change with its 95% CI, the gate rule."""
    metrics = _read_json(_output_path(eval_record, "metrics")).get("suites") or {}
    rules = {r.get("suite"): r for r in decision.get("eval_rules") or [] if isinstance(r, dict)}
    lines = []
    for name, suite in sorted(metrics.items()):
        if not isinstance(suite, dict):
            continue
        ci = suite.get("ci95") or [None, None]
        line = (f"  {name} ({suite.get('kind', '?')}): loss {suite.get('base_loss', 0):.4f} -> "
                f"{suite.get('adapted_loss', 0):.4f}, change {_pct(suite.get('relative_change'))}"
                f" (95% CI {_pct(ci[0])} .. {_pct(ci[1])})")
        rule = rules.get(name)
        if rule:
            line += (f"; gate {rule.get('rule')} {rule.get('comparison')} "
                     f"{rule.get('threshold')}: {rule.get('outcome')}")
        lines.append(line)
    return lines


def _context_lines(summary: Any) -> list[str]:
    lines = []
    if summary.dataset:
        lines.append(f"Dataset: {summary.dataset}.")
    lines.append(summary.started_by() + (f": {summary.note}" if summary.note else "."))
    return lines


def _failed_task(summary: Any) -> tuple[str, str] | None:
    for stage in summary.stages:
        if stage.outcome == "failed":
            return stage.task_id, stage.detail
    return None


def _tries(events: Iterable[Mapping[str, Any]], task_id: str) -> tuple[int, list[str]]:
    """How many tries of `task_id` failed, and the last one's error lines."""
    tries, error = 0, ""
    for event in events:
        if event.get("task_id") == task_id and event.get("event") == "task_failed":
            tries = max(tries, int(event.get("try_number") or 1))
            details = event.get("details") or {}
            error = str(details.get("error") or "") or (
                f"exit {details['exit_code']} ({details.get('class', '')})"
                if "exit_code" in details else str(event.get("outcome") or ""))
            tail = details.get("output_tail")
            if isinstance(tail, list) and tail:
                error += "\nlast output:\n" + "\n".join(f"  {line}" for line in tail)
    lines = [line for line in error.splitlines() if line.strip()]
    return tries, lines[:MAX_ERROR_LINES + 1]


def outcome_message(spec: Spec, summary: Any, records: Mapping[str, Any],
                    events: Sequence[Mapping[str, Any]], gate_decision: Path) -> Message:
    """The one message about how a run ended, from its summary (run_summary's teardown)."""
    dag_id, run_id = summary.dag_id, summary.run_id
    decision = _read_json(str(gate_decision)) if gate_decision.is_file() else {}
    head = f"DAG {dag_id}, run {run_id}"
    if summary.outcome in ("released", "already released"):
        release = (records.get("release_adapter") or {}).get("metrics") or {}
        manifest = _output_path(records.get("release_adapter"), "release_manifest")
        title = (f"released {summary.release}" if summary.outcome == "released"
                 else f"no new release: already released as {summary.release}")
        lines = [f"{summary.headline}.", head + ".",
                 "Metrics that passed the gate" + (" (overridden)" if decision.get("overridden")
                                                   else "") + ":",
                 *suite_lines(records.get("evaluate_adapter"), decision),
                 f"Release folder: {release.get('release_dir', '?')}",
                 f"Manifest: {manifest or '?'}"]
        return Message(NotifyEvent.RELEASED, f"[peftflow] {spec.dag_id}: {title}",
                       (*lines, *_context_lines(summary), f"Run: {run_url(dag_id, run_id)}"),
                       dag_id, run_id)
    if summary.outcome == "blocked":
        lines = [f"{summary.headline}.", head + ".", "Why:",
                 *(f"  - {r}" for r in summary.reasons or ("(no reason recorded)",)),
                 *(["Measured:", *suite_lines(records.get("evaluate_adapter"), decision)]
                   if decision else []),
                 f"Gate decision: {gate_decision}"]
        return Message(NotifyEvent.RELEASE_BLOCKED, f"[peftflow] {spec.dag_id}: release "
                       "blocked by the gate",
                       (*lines, *_context_lines(summary),
                        f"Run: {run_url(dag_id, run_id, 'release_gate')}"), dag_id, run_id)
    failed = _failed_task(summary)
    if failed is None:
        return Message(NotifyEvent.RUN_FAILED, f"[peftflow] {spec.dag_id}: run did not finish",
                       (f"{summary.headline}.", head + ".", *_context_lines(summary),
                        f"Run: {run_url(dag_id, run_id)}"), dag_id, run_id)
    task_id, detail = failed
    tries, error = _tries(events, task_id)
    allowed = spec.retry_policy(task_id).retries + 1 if task_id in spec.retries else 1
    exhausted = allowed > 1 and tries >= allowed
    event = NotifyEvent.RETRIES_EXHAUSTED if exhausted else NotifyEvent.RUN_FAILED
    why = (f"retries exhausted: failed on try {tries} of {allowed}" if exhausted else
           f"failed on try {tries or 1} of {allowed}"
           + (" (a permanent failure is not retried)" if tries < allowed else ""))
    lines = [f"{summary.headline}.", head + ".", f"{task_id} {why}.",
             *(["Error:", *(f"  {line}" for line in error)] if error else [])]
    title = f"[peftflow] {spec.dag_id}: run failed in {task_id}" + (
        f" (retries exhausted, {tries} tries)" if exhausted else f" ({detail})" if detail else "")
    return Message(event, title, (*lines, *_context_lines(summary),
                                  f"Log: {run_url(dag_id, run_id, task_id)}"), dag_id, run_id)


def _when(text: str) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS UTC` (as given when it is not one)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def overdue_message(spec: Spec, dag_id: str, run_id: str, started: str, due: str,
                    state: str) -> Message:
    after = spec.notify.training_overdue_after_s or 0
    started, due = _when(started), _when(due)
    return Message(
        NotifyEvent.TRAINING_OVERDUE,
        f"[peftflow] {spec.dag_id}: training overdue (not done {after} s into the run)",
        (f"train_adapter of DAG {dag_id}, run {run_id} is not done: {state}.",
         f"The run started at {started}; training should have finished by {due} "
         f"(notify.training_overdue_after_s: {after}).",
         "The run keeps going; this is a warning, not a failure.",
         f"Log: {run_url(dag_id, run_id, 'train_adapter')}"),
        dag_id, run_id)
