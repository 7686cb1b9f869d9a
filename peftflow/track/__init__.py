"""Optional experiment tracking: each Airflow run as one MLflow run (off by default).

`log_run()` is called by the run_summary teardown. With PEFTFLOW_TRACKING=mlflow (or a
PEFTFLOW_MLFLOW_TRACKING_URI set) it logs the run's params, the loss per step, the eval
metrics per suite with their CI, the gate verdict and links to the stage and release
folders; results reused from an earlier run are linked to that run's MLflow run instead of
logged again. It never raises: a tracker that is down, a missing client or a bad setting is a
`failed` result, a warning in the task log and a `tracking_failed` audit event.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftflow import settings
from peftflow.errors import PeftflowError
from peftflow.store import audit
from peftflow.track._secrets import redact_uri, scrub

__all__ = ["TrackResult", "TrackStatus", "log_run", "redact_uri"]

log = logging.getLogger(__name__)


class TrackStatus(enum.StrEnum):
    OFF = "off"  # tracking is switched off: nothing was tried
    LOGGED = "logged"  # this run's data is in MLflow (perhaps with some results linked)
    LINKED = "linked"  # every result was reused: the MLflow run links to the runs holding them
    FAILED = "failed"  # nothing or not all was logged; `message` says why


@dataclass(frozen=True)
class TrackResult:
    status: TrackStatus
    mlflow_run_id: str | None
    tracking_uri: str | None  # redacted: never the password
    experiment: str | None
    message: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "mlflow_run_id": self.mlflow_run_id,
                "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                "message": self.message, "seconds": round(self.seconds, 3)}


def log_run(*, dag_id: str, run_id: str, records: Mapping[str, Mapping[str, Any] | None],
            summary: Mapping[str, Any], params: Mapping[str, Any],
            task_id: str | None = None) -> TrackResult:
    """Log one finished Airflow run to the tracker and audit the result; never raises.

    `records` are the XComs by task id (None for a task that did not run), `summary` the
    run summary's `as_dict()`, `params` the trigger params. Calling it again for the same run
    changes nothing unless the run's records changed. `task_id` goes into the audit event.
    """
    t0 = time.monotonic()
    try:
        cfg = settings.tracking()
    except PeftflowError as exc:
        result = TrackResult(TrackStatus.FAILED, None, None, None, f"not tracked: {exc}")
        return _report(result, dag_id, run_id, task_id, summary)
    if cfg.tracker is settings.Tracker.OFF:
        return TrackResult(TrackStatus.OFF, None, None, None,
                           "tracking is off (PEFTFLOW_TRACKING)")
    uri = redact_uri(cfg.uri)
    try:
        from peftflow.track import _facts, _mlflow

        facts = _facts.gather(dag_id=dag_id, run_id=run_id, records=records, summary=summary,
                              params=params)
        settings.set_mlflow_defaults(file_store=cfg.file_store)
        done = _mlflow.log(facts, cfg)
        result = TrackResult(TrackStatus(done.status), done.run_id, uri, done.experiment,
                             scrub(done.message, cfg.uri), time.monotonic() - t0)
    except Exception as exc:  # the tracker must never fail the run: reported and audited
        hint = " (pip install .[mlflow])" if isinstance(exc, ModuleNotFoundError) else ""
        text = scrub(f"{type(exc).__name__}: {exc}".splitlines()[0][:600], cfg.uri)
        result = TrackResult(TrackStatus.FAILED, None, uri, cfg.experiment or dag_id,
                             f"not tracked at {uri}: {text}{hint}", time.monotonic() - t0)
    return _report(result, dag_id, run_id, task_id, summary)


def _report(result: TrackResult, dag_id: str, run_id: str, task_id: str | None,
            summary: Mapping[str, Any]) -> TrackResult:
    """The task log line and the audit event of a result (an audit error is only logged)."""
    if result.status is TrackStatus.FAILED:
        log.warning("TRACKING %s", result.message)
    else:
        log.info("TRACKING %s (%.1f s)", result.message, result.seconds)
    kind = (audit.EventKind.TRACKING_FAILED if result.status is TrackStatus.FAILED
            else audit.EventKind.TRACKING_LOGGED)
    details = {"tracker": "mlflow", "tracking_uri": result.tracking_uri,
               "experiment": result.experiment, "mlflow_run_id": result.mlflow_run_id,
               "message": result.message, "run_outcome": summary.get("outcome")}
    try:
        audit.append_event({"event": str(kind), "dag_id": dag_id, "run_id": run_id,
                            "task_id": task_id, "actor": "peftflow",
                            "outcome": str(result.status),
                            "duration_s": round(result.seconds, 3),
                            "details": {k: v for k, v in details.items() if v is not None}})
    except (PeftflowError, OSError) as exc:
        log.warning("TRACKING the %s audit event was not written (%s)", kind, exc)
    return result
