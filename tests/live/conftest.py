"""Live-scheduler suite: the real scheduler, dag-processor and api-server (LocalExecutor) on a
temporary AIRFLOW_HOME and free ports, once on SQLite and once on a private PostgreSQL 15.

Every test here is marked `live` (the PostgreSQL ones also `postgres`) and runs after the
rest of the suite, so the deployment (set up once per database, about a minute) never runs
beside the in-process tests. Teardown always runs: services by pid file and process group,
then any process still carrying this deployment's environment markers, then the cluster.
Measurements (timings, retries, gaps) are printed as `[live-measure]` lines and summarised
at the end of the run. PEFTFLOW_LIVE_KEEP=1 keeps the temp folders for inspection.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness modules beside this file

import live_postgres
import live_scenarios
import receivers as live_receivers
from live_harness import Live, copy_project_files, free_port, service_env

HERE = Path(__file__).parent
MEASUREMENTS: list[dict[str, Any]] = []
REPORT = Path(tempfile.gettempdir()) / "peftflow-live-measurements.json"
_ENV_PREFIXES = ("PEFTFLOW_", "AIRFLOW__", "AIRFLOW_HOME")


def pytest_itemcollected(item: pytest.Item) -> None:
    if Path(str(item.path)).is_relative_to(HERE):
        item.add_marker(pytest.mark.live)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Live tests last (keeping pytest's grouping by deployment), never between others. The
    multi-GPU and Edge suites go first among them: they measure makespans, so no other
    deployment may be up beside them (the session deployments start at their first test)."""
    live = [i for i in items if i.get_closest_marker("live")]
    alone = [i for i in live if i.get_closest_marker("gpus")] + [
        i for i in live if i.get_closest_marker("edge")]
    items[:] = ([i for i in items if not i.get_closest_marker("live")] + alone
                + [i for i in live if i not in alone])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEASUREMENTS:
        return
    terminalreporter.section("live-scheduler measurements")
    for m in MEASUREMENTS:
        values = ", ".join(f"{k}={v}" for k, v in m.items() if k not in ("name", "db"))
        terminalreporter.write_line(f"{m['name']} [{m['db']}]: {values}")
    terminalreporter.write_line(f"(JSON: {REPORT})")


@pytest.fixture(scope="session")
def measure(session_dir: Path) -> Callable[..., None]:
    """record(name, db, **values): print a labelled line and keep it for the summary."""
    def record(name: str, db: str, **values: Any) -> None:
        entry = {"name": name, "db": db, **values}
        MEASUREMENTS.append(entry)
        print(f"[live-measure] {name} [{db}]: {json.dumps(values, default=str)}", flush=True)
        text = json.dumps(MEASUREMENTS, indent=1, default=str)
        for path in (session_dir / "live-measurements.json", REPORT):
            path.write_text(text)

    return record


def _activate(live: Live, patch: pytest.MonkeyPatch) -> None:
    """Point this process at the deployment: peftflow.airflow.services/settings read os.environ."""
    for key in list(os.environ):
        if key.startswith(_ENV_PREFIXES) and key not in live.env:
            patch.delenv(key)
    for key, value in live.env.items():
        if key.startswith(_ENV_PREFIXES):
            patch.setenv(key, value)


def _timed(live: Live, step: str, action: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    result = action()
    live.timings[step] = round(time.monotonic() - t0, 1)
    return result


def _start(live: Live, patch: pytest.MonkeyPatch) -> None:
    from peftflow.airflow import services

    if live.cluster is not None:
        _timed(live, "postgres_start", live.cluster.start)
    copy_project_files(live.root)
    writers = {GPUS_KIND: live_scenarios.write_gpus, EDGE_KIND: live_scenarios.write_edge}
    live.dag_ids = (writers[live.kind](live.root) if live.kind in writers
                    else live_scenarios.write_all(live.root, live.kind))
    _activate(live, patch)
    db = ["--db", live.cluster.url] if live.cluster else []
    if live.kind == EDGE_KIND:
        db += ["--executor", "edge"]
    _timed(live, "configure", lambda: live.peftflow("services", "configure", *db))
    _timed(live, "db_migrate", lambda: live.airflow("db", "migrate", timeout=600))
    if live.kind == "sqlite":  # the notification tests' receivers (those tests start them)
        conns = live_receivers.connections(free_port(), free_port(), free_port(), free_port())
        (live.root / live_receivers.CONNECTIONS_FILE).write_text(json.dumps(conns))
        for conn_id, doc in conns.items():
            live.airflow("connections", "add", conn_id, "--conn-json", doc)
    live.peftflow("devices", "sync-pool")  # as setup_airflow.sh: one slot per device
    _timed(live, "reserialize", lambda: live.airflow("dags", "reserialize", timeout=300))
    # what setup_airflow.sh does last: each DAG paused or not as its spec says
    live.peftflow("services", "pause-policy")
    _timed(live, "services_start", lambda: services.start(live.deployment(), wait_s=240))
    missing = []
    for dag_id in live.dag_ids:
        try:
            dag = live.api(lambda d=dag_id: live.client.dag(d))
        except Exception as exc:
            missing.append(f"{dag_id}: {exc}")
            continue
        # the pause policy, not the harness, decides: only the cron DAG starts paused
        assert dag["is_paused"] is (dag_id in live_scenarios.PAUSED_AT_START), dag
    if missing:
        errors = live.api(lambda: live.client._send("GET", "/api/v2/importErrors"))
        raise AssertionError(f"DAGs not registered: {missing}\nimport errors: "
                             f"{json.dumps(errors, indent=1)[:6000]}")


def _stop(live: Live) -> None:
    from peftflow.airflow import services

    try:
        services.stop(live.deployment())
    finally:
        killed = live.kill_leftovers()
        if killed:
            print(f"[live] teardown killed leftover process groups {killed}")
        live.unmount_all()
        if live.cluster is not None:
            live.cluster.stop()


@pytest.fixture(scope="session", params=[
    "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, smoke_base_model: Path,
               measure: Callable[..., None]) -> Iterator[Live]:
    """A started deployment; the sqlite-only modules parametrize it indirectly."""
    yield from _deployment(str(request.param), measure)


@pytest.fixture(scope="module")
def gpu_deployment(smoke_base_model: Path, measure: Callable[..., None]) -> Iterator[Live]:
    """SQLite, an inventory of two fake GPUs (pool gpu: 2 slots) and 4 LocalExecutor workers,
    so two GPU stages and the CPU stages of other runs can run at once. Module-scoped: it is
    down again before the other deployments start."""
    yield from _deployment(GPUS_KIND, measure)


@pytest.fixture(scope="module")
def edge_deployment(smoke_base_model: Path, measure: Callable[..., None]) -> Iterator[Live]:
    """The edge profile: a private PostgreSQL, hybrid executors, the Edge API on the
    api-server; the tests start the Edge workers. Module-scoped like the GPU deployment."""
    yield from _deployment(EDGE_KIND, measure)


GPUS_KIND = "sqlite-gpus"
EDGE_KIND = "postgresql-edge"


def _deployment(kind: str, measure: Callable[..., None]) -> Iterator[Live]:
    if kind in ("postgresql", EDGE_KIND) and (why := live_postgres.missing_binaries()):
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix=f"peftflow-live-{kind}-"))
    api_port, log_port, pg_port = free_port(), free_port(), free_port()
    scripts = root / "scripts" if kind == "sqlite" else None
    env = service_env(root, api_port, log_port, scripts)
    if kind in (GPUS_KIND, EDGE_KIND):
        env.update({"PEFTFLOW_DEVICES_CONFIG": str(root / "devices.yaml"),
                    "PEFTFLOW_PARALLELISM": "4"})
    if kind == EDGE_KIND:  # a dead worker's task is failed (and retried) after 30 s
        env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = "30"
    live = Live(kind, root, env)
    if kind in ("postgresql", EDGE_KIND):
        live.cluster = live_postgres.new_cluster(root / "pg", pg_port)
    patch = pytest.MonkeyPatch()
    t0 = time.monotonic()
    try:
        _start(live, patch)
        live.timings["total_startup"] = round(time.monotonic() - t0, 1)
        measure("deployment startup (s)", kind, **live.timings)
        yield live
    finally:
        try:
            _stop(live)
        finally:
            patch.undo()
            if os.environ.get("PEFTFLOW_LIVE_KEEP"):
                print(f"[live] kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
