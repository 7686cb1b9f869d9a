"""Starting runs from outside Airflow: the asset event of a newly registered dataset version.

Why the REST API (POST /api/v2/assets/events) and not a producer task with outlets: the event
is emitted by the act of registering, which happens in a shell, not in a DAG. A producer DAG
would need a run (and a scheduler round trip) just to say "this file now exists", and its
outlets cannot carry which version was registered. The REST call is Airflow's public,
authenticated way to record an external asset change; the event's `extra` carries the
manifest path, name and version, which the retrain DAG reads from its triggering event.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.airflow import expand
from peftflow.airflow.client import Client
from peftflow.errors import PeftflowError
from peftflow.store import audit, paths
from peftflow.store.hashing import sha256_file


def event_extra(manifest_path: Path, name: str, version: str) -> dict[str, Any]:
    return {"manifest": paths.display_path(manifest_path), "name": name, "version": version,
            "manifest_sha256": sha256_file(manifest_path)}


@dataclass(frozen=True)
class Delivery:
    """What the event did for one DAG scheduled on the dataset's asset."""

    dag_id: str
    outcome: str  # started | queued | paused
    run_id: str | None
    line: str


def _retry_hint(manifest_path: Path) -> str:
    return f"peftflow dataset announce {paths.display_path(manifest_path)}"


def _listeners(client: Client, uri: str) -> tuple[int | None, dict[str, bool]]:
    """The asset's id and, per DAG scheduled on it, whether that DAG is paused."""
    asset = client.asset(uri)
    if asset is None:
        return None, {}
    dags = sorted({str(ref["dag_id"]) for ref in asset.get("scheduled_dags", [])})
    return int(asset["id"]), {d: bool(client.dag(d).get("is_paused")) for d in dags}


def _started_runs(client: Client, asset_id: int, event_id: int,
                  wait_s: float) -> dict[str, str]:
    """dag_id -> run_id of the runs Airflow created from this event, waiting up to wait_s.

    The event is recorded already: a failed look (SQLite answers a busy moment with a 500)
    is retried until the deadline, and never turns into "Airflow was not told"."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            event = client.asset_event(asset_id, event_id)
        except PeftflowError:
            event = None
        runs = {str(r["dag_id"]): str(r["run_id"])
                for r in (event or {}).get("created_dagruns", [])}
        if runs or time.monotonic() >= deadline:
            return runs
        time.sleep(0.5)


def _deliveries(paused: dict[str, bool], started: dict[str, str], manifest_path: Path,
                ui: str) -> list[Delivery]:
    found = []
    for dag_id, is_paused in paused.items():
        if is_paused:
            found.append(Delivery(dag_id, "paused", None, (
                f"{dag_id} is paused: nothing starts (Airflow drops asset events for a paused "
                f"DAG); to start it: airflow dags unpause {dag_id} && "
                f"{_retry_hint(manifest_path)}")))
        elif dag_id in started:
            run_id = started[dag_id]
            found.append(Delivery(dag_id, "started", run_id, (
                f"{dag_id}: started run {run_id} ({ui}/dags/{dag_id}/runs/"
                f"{urllib.parse.quote(run_id, safe='')})")))
        else:
            found.append(Delivery(dag_id, "queued", None, (
                f"{dag_id}: the event is queued but no run was created yet; the scheduler "
                "creates it when it runs and the DAG has no active run (check: "
                "./setup_airflow.sh status)")))
    return found


def announce_dataset(manifest_path: Path, name: str, version: str,
                     client: Client | None = None, wait_s: float = 20.0) -> bool:
    """Emit the asset event of a dataset version and say, per listening DAG, what it did.

    True when every DAG scheduled on the asset started (or queued) a run; False, with the
    command that recovers, when Airflow is unreachable, no DAG listens, or a DAG is paused.
    """
    uri = expand.dataset_asset_uri(name)
    extra = event_extra(manifest_path, name, version)
    api = client or Client.from_settings()
    try:
        asset_id, paused = _listeners(api, uri)
        if asset_id is None:
            print(f"{name} {version}: no DAG is scheduled on {uri}, so nothing starts (add a "
                  f"retrain_on_new_dataset spec with dataset.name: {name})")
            _audit(uri, extra, "no_listener", {})
            return False
        event = api.post_asset_event(asset_id, extra)
    except PeftflowError as exc:
        print(f"warning: {name} {version} is registered, but Airflow was not told: {exc}\n"
              f"  no run starts until it is; once Airflow is up: {_retry_hint(manifest_path)}",
              file=sys.stderr)
        _audit(uri, extra, "not_announced", {"error": str(exc)})
        return False
    started = _started_runs(api, asset_id, int(event["id"]),
                            wait_s if not all(paused.values()) else 0.0)
    deliveries = _deliveries(paused, started, manifest_path, api.base_url)
    print(f"{name} {version}: asset event {event['id']} on {uri}")
    for delivery in deliveries:
        print(f"  {delivery.line}")
    _audit(uri, extra, "announced", {d.dag_id: d.run_id or d.outcome for d in deliveries})
    return all(d.outcome != "paused" for d in deliveries)


def _audit(uri: str, extra: dict[str, Any], outcome: str, runs: dict[str, Any]) -> None:
    audit.append_event({"event": "dataset_registered", "actor": settings.current_user(),
                        "outcome": outcome, "details": {"asset": uri, **extra, "runs": runs}})
