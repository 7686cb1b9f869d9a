"""`training_overdue`: an Airflow deadline alert on the run, checked by the scheduler.

Airflow 3's deadline alerts are per DAG run: the scheduler records a deadline when the run is
queued (reference DAGRUN_QUEUED_AT + notify.training_overdue_after_s) and, once it passes
while the run is still going, hands our callback to the executor (a SyncCallback, so no
triggerer is needed). So the warning comes even while the training waits for the GPU pool or
its worker is gone. The callback looks at this run's audit trail: training already done (ran
or reused) or the run already over means nothing to say; otherwise one message goes out.
Airflow prunes the deadline of a run that succeeds in time; the check covers the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from peftflow.spec.model import Spec

log = logging.getLogger(__name__)

CALLBACK = "peftflow.notify.deadline.on_training_overdue"
ONCE_KEY = "training_overdue"
DONE_EVENTS = frozenset({"task_succeeded", "task_reused"})


def alert_config(spec: Spec) -> dict[str, Any] | None:
    """The DAG's DeadlineAlert in dag-factory's `__type__` notation; None without one."""
    after = spec.notify.training_overdue_after_s
    if after is None:
        return None
    return {
        "__type__": "airflow.sdk.DeadlineAlert",
        "reference": {"__type__": "airflow.sdk.definitions.deadline.DagRunQueuedAtDeadline"},
        "interval": {"__type__": "datetime.timedelta", "seconds": after},
        "callback": {"__type__": "airflow.sdk.SyncCallback", "callback_callable": CALLBACK,
                     "kwargs": {"spec_file": str(spec.path)}},
        "name": "training_overdue",
    }


def training_state(dag_id: str, run_id: str) -> str | None:
    """None when training is done; else what the audit trail says about it."""
    from peftflow.store import audit

    state = "not started yet (waiting for the GPU pool or an upstream stage)"
    for event in audit.events(dag_id=dag_id, run_id=run_id):
        if event.get("task_id") != "train_adapter":
            continue
        kind = event.get("event")
        if kind in DONE_EVENTS:
            return None
        if kind == "task_started":
            state = f"running (try {event.get('try_number', 1)})"
        elif kind == "task_failed":
            state = f"try {event.get('try_number', 1)} failed, waiting for a retry"
    return state


def on_training_overdue(spec_file: str, context: dict[str, Any] | None = None,
                        **_: Any) -> None:
    """The deadline's callback (run by the executor). Never raises: a notification problem
    must not become a failed callback that someone has to chase."""
    from peftflow import settings
    from peftflow.notify import deliver, message
    from peftflow.run.runinfo import safe_segment
    from peftflow.spec import validate

    try:
        dag_run = dict((context or {}).get("dag_run") or {})
        dag_id, run_id = str(dag_run["dag_id"]), str(dag_run["dag_run_id"])
        if str(dag_run.get("state")) in ("success", "failed"):
            log.info("deadline of %s %s passed after the run ended: nothing to say",
                     dag_id, run_id)
            return
        state = training_state(dag_id, run_id)
        if state is None:
            log.info("deadline of %s %s passed, but training is done: no message",
                     dag_id, run_id)
            return
        spec = validate.load_spec(Path(spec_file))
        due = str(((context or {}).get("deadline") or {}).get("deadline_time", "?"))
        msg = message.overdue_message(spec, dag_id, run_id, str(dag_run.get("queued_at")),
                                      due, state)
        deliver.send(spec, msg, run_dir=settings.get().artifact_root / dag_id
                     / safe_segment(run_id), once=ONCE_KEY, context=context or {},
                     task_id="train_adapter")
    except Exception:
        log.exception("the training_overdue check failed; no message was sent")
