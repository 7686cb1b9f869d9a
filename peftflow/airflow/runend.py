"""What the run_summary teardown does when a run has ended (kept out of taskrun.py).

Summarise the run (log, run_summary.json, the run note), tell the spec's notification
channels how it ended (one message), and log it to MLflow when tracking is on. Never fails:
each of these is a warning in the task log (and an audit event) when it cannot be done, and
the run's state stays what its stages decided.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from airflow.sdk import Context

from peftflow.airflow import expand
from peftflow.airflow.task import GateTask, LoggingTask
from peftflow.errors import PeftflowError
from peftflow.run import runinfo
from peftflow.spec import validate
from peftflow.spec.model import Spec
from peftflow.store import audit

log = logging.getLogger(__name__)


def _task_states(context: Context, run: runinfo.RunInfo) -> dict[str, str | None]:
    """Airflow's state of every task of this run (empty when the API cannot tell)."""
    try:
        found = context["ti"].get_task_states(dag_id=run.dag_id, run_ids=[run.run_id])
        states = found.get(run.run_id, {}) if isinstance(found, dict) else {}
        return {str(k): (None if v is None else str(v)) for k, v in states.items()}
    except Exception as exc:  # the summary must never fail the run
        log.warning("could not read the task states of this run (%s); summarising from the "
                    "audit trail alone", exc)
        return {}


def run_summary(op: GateTask, context: Context) -> dict[str, Any]:
    """The run_summary teardown: log what the run did, keep it as a file, set the run note.

    Never fails: a summary that cannot be written or a note that cannot be set is a warning
    in this log, and the run's state stays what its stages decided.
    """
    from peftflow.airflow import runsummary

    run = runinfo.from_context(context)
    ti = context["ti"]
    records = {t: ti.xcom_pull(task_ids=t) for t in expand.task_order()}
    try:
        events = list(audit.events(dag_id=run.dag_id, run_id=run.run_id))
    except OSError as exc:
        op.log.warning("could not read the audit trail (%s)", exc)
        events = []
    summary = runsummary.build(dag_id=run.dag_id, run_id=run.run_id, actor=run.actor,
                               note=run.note, events=events, records=records,
                               states=_task_states(context, run))
    for line in summary.log_lines():
        op.log.info("%s", line)
    try:
        from peftflow.store import atomic

        atomic.write_json(run.run_dir() / "run_summary.json", summary.as_dict())
    except OSError as exc:
        op.log.warning("could not write run_summary.json (%s)", exc)
    _set_note(op, run, summary.note_markdown())
    spec = _summary_spec(op, run)
    if spec is not None:
        _notify_outcome(op, context, run, spec, summary, records, events)
    _track(run, summary, records)
    return summary.as_dict()


def _summary_spec(op: GateTask, run: runinfo.RunInfo) -> Spec | None:
    if not op.spec_file:
        return None
    try:
        return validate.load_spec(Path(op.spec_file))
    except PeftflowError as exc:
        op.log.warning("no notifications for this run: its spec does not load (%s)", exc)
        return None


def _notify_outcome(op: LoggingTask, context: Context, run: runinfo.RunInfo, spec: Spec,
                    summary: Any, records: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """The one message about how this run ended; once per try of this task (a run cleared
    and run again ends again, and says so)."""
    from peftflow.notify import deliver, message

    if not spec.notify.channels:
        return
    try:
        msg = message.outcome_message(spec, summary, records, events,
                                      run.stage_dir(expand.GATE_TASK) / "gate_decision.json")
        deliver.send(spec, msg, run_dir=run.run_dir(), once=f"outcome.{run.try_number}",
                     context=context, task_id=run.task_id, task_log=op.log)
    except Exception as exc:  # a notification bug must not fail the run it reports on
        op.log.warning("NOTIFY failed before sending (the run's outcome is unchanged): %s: %s",
                       type(exc).__name__, exc)


def _track(run: runinfo.RunInfo, summary: Any, records: dict[str, Any]) -> None:
    """Experiment tracking (MLflow), when switched on; never fails the run: log_run never
    raises, writes its TRACKING line to this task's log and audits tracking_logged /
    tracking_failed itself."""
    from peftflow import track

    track.log_run(dag_id=run.dag_id, run_id=run.run_id, records=records,
                  summary=summary.as_dict(), params=run.params, task_id=run.task_id)


def _set_note(op: LoggingTask, run: runinfo.RunInfo, text: str) -> None:
    from peftflow.airflow.client import Client

    try:
        Client.from_settings().set_note(run.dag_id, run.run_id, text)
    except PeftflowError as exc:
        op.log.warning("the run note was not set (%s); the summary above and run_summary.json "
                       "hold the same text", exc)
        return
    op.log.info("run note set (visible on the run in the Airflow UI)")
