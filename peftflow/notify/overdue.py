"""`training_overdue`: the running training warns once when it is past its deadline.

The deadline is `notify.training_overdue_after_s` after the run started. The check runs in
the train_adapter task's own wait loop (every 5 s, in the task process Airflow started), so
the notifier reads its connection the way any task does. A training that waited for the GPU
pool past its deadline warns within 5 s of starting.

Why not Airflow 3's deadline alerts: in Airflow 3.3.2 their callbacks run with a `workload`
token that the Execution API refuses on /execution/connections (HTTP 403, "Token type not
allowed for endpoint"), so a notifier there cannot read a connection created with `airflow
connections add` (only AIRFLOW_CONN_* variables, which the callback finds first, would work).

Never raises: a warning must not stop the training it warns about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from peftflow.spec.model import NotifyEvent, Spec

log = logging.getLogger(__name__)

ONCE_KEY = "training_overdue"


def run_started(context: Mapping[str, Any]) -> datetime:
    """When the run started (its trigger time before that; now if Airflow tells neither)."""
    dag_run = context.get("dag_run")
    for name in ("start_date", "run_after"):
        value = getattr(dag_run, name, None)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)


def watch(spec: Spec, *, dag_id: str, run_id: str, try_number: int, run_dir: Path,
          context: Mapping[str, Any], task_log: Any) -> Callable[[], None] | None:
    """The on_tick of a training's wait loop; None when nothing would hear a warning."""
    after = spec.notify.training_overdue_after_s
    if after is None or not any(c.wants(NotifyEvent.TRAINING_OVERDUE)
                                for c in spec.notify.channels):
        return None
    started = run_started(context)
    due = started + timedelta(seconds=after)
    sent = False

    def tick() -> None:
        nonlocal sent
        now = datetime.now(UTC)
        if sent or now < due:
            return
        sent = True
        try:
            from peftflow.notify import deliver, message

            into = int((now - started).total_seconds())
            msg = message.overdue_message(spec, dag_id, run_id, started.isoformat(),
                                          due.isoformat(), f"running (try {try_number}), "
                                          f"{into} s into the run")
            deliver.send(spec, msg, run_dir=run_dir, once=ONCE_KEY, context=context,
                         task_id="train_adapter", task_log=task_log)
        except Exception as exc:  # the training goes on whatever happens here
            (task_log or log).warning("NOTIFY training_overdue failed before sending: %s: %s",
                                      type(exc).__name__, exc)

    return tick
