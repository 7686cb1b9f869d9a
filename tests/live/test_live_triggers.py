"""How runs start under the real scheduler (SQLite): the asset event of `peftflow dataset
register` starts the retrain DAG on that version (once), and a backfill of a cron DAG."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from live_harness import Live
from live_scenarios import BACKFILL, RETRAIN, RETRAIN_DATASET, docs, write_jsonl

pytestmark = [pytest.mark.live,
              pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)]
QUIET_S = 20  # how long a repeated registration must start nothing


def _wait_runs(live: Live, dag_id: str, count: int, timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        runs = live.runs(dag_id)
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def test_registering_a_new_dataset_version_starts_the_retrain_dag_on_it_once(
        deployment: Live, measure: Callable[..., None]) -> None:
    live = deployment
    assert live.runs(RETRAIN) == []
    data = write_jsonl(live.root / "data" / RETRAIN_DATASET / "v2" / "train.jsonl",
                       docs(120, 120))
    argv = ("dataset", "register", str(data), "--name", RETRAIN_DATASET, "--version", "v2")
    t0 = time.monotonic()
    first = live.peftflow(*argv)  # on the deployment as setup leaves it: nothing else
    runs = _wait_runs(live, RETRAIN, 1, timeout=120)
    assert len(runs) == 1, runs
    queued_after = time.monotonic() - t0
    run_id = str(runs[0]["dag_run_id"])
    assert runs[0]["run_type"] == "asset_triggered", runs[0]
    assert f"{RETRAIN}: started run {run_id}" in first.stdout, (first.stdout, first.stderr)
    took = live.wait_for(RETRAIN, run_id, "success", timeout=600)
    note = live.wait_note(RETRAIN, run_id)
    assert note.startswith("**Released ") or note.startswith("**No new release"), note
    assert f"Dataset: {RETRAIN_DATASET} v2" in note, note
    prepared = live.stage_status(RETRAIN, run_id, "prepare_dataset")
    metrics = prepared["metrics"]
    assert (metrics["dataset_name"], metrics["dataset_version"]) == (RETRAIN_DATASET, "v2")
    inputs = {i["name"]: i["path"] for i in prepared["inputs"]}
    assert inputs["data"] == str(data), inputs

    again = live.peftflow(*argv)
    assert "already registered" in again.stderr and "nothing starts" in again.stderr
    assert "started run" not in again.stdout
    runs = _wait_runs(live, RETRAIN, 2, timeout=QUIET_S)
    assert len(runs) == 1, f"registering the same version again started a run: {runs}"
    measure("retrain on new dataset (asset event)", live.kind, version="v2",
            register_to_run_created_s=round(queued_after, 1), run_wall_s=round(took, 1),
            second_register_runs=0)


def test_a_backfill_of_a_cron_dag_creates_and_completes_its_run(
        deployment: Live, measure: Callable[..., None]) -> None:
    """The runbook's command: `airflow backfill create --dag-id ID --from-date D
    --to-date D+1` gives the one 03:00 run of day D (the DAG must be unpaused)."""
    live = deployment
    live.api(lambda: live.client.unpause(BACKFILL))
    # Unpausing a cron DAG with catchup off starts its latest run at once: let it finish.
    for run in _wait_runs(live, BACKFILL, 1, timeout=60):
        live.wait_for(BACKFILL, str(run["dag_run_id"]), "success", timeout=600)
    day = (datetime.now(UTC) - timedelta(days=7)).date()
    argv = ["backfill", "create", "--dag-id", BACKFILL, "--from-date", day.isoformat(),
            "--to-date", (day + timedelta(days=1)).isoformat()]
    t0 = time.monotonic()
    tries, created = _airflow_retrying_lock(live, argv)
    print(f"$ airflow {' '.join(argv)}\n{created.stdout[-1500:]}")
    deadline = time.monotonic() + 120
    backfill: list[dict[str, object]] = []
    while not backfill and time.monotonic() < deadline:
        backfill = [r for r in live.runs(BACKFILL) if r["run_type"] == "backfill"]
        time.sleep(1)
    assert len(backfill) == 1, live.runs(BACKFILL)
    run = backfill[0]
    assert str(run["logical_date"]).startswith(f"{day.isoformat()}T03:00"), run
    took = live.wait_for(BACKFILL, str(run["dag_run_id"]), "success", timeout=600)
    measure("backfill of a cron DAG", live.kind, command="airflow " + " ".join(argv),
            create_attempts=tries, logical_date=run["logical_date"],
            create_to_success_s=round(time.monotonic() - t0, 1), run_wall_s=round(took, 1))


def _airflow_retrying_lock(live: Live, argv: list[str],
                           attempts: int = 4) -> tuple[int, subprocess.CompletedProcess[str]]:
    """A CLI write on SQLite can lose the 5 s lock wait to a busy scheduler; rerun it then."""
    for attempt in range(1, attempts + 1):
        done = live.airflow(*argv, check=False)
        if done.returncode == 0:
            return attempt, done
        locked = "database is locked" in done.stdout + done.stderr
        assert locked and attempt < attempts, done.stdout[-3000:] + done.stderr[-3000:]
        print(f"airflow {argv[0]} {argv[1]}: 'database is locked' (attempt {attempt}); again")
        time.sleep(3)
    raise AssertionError("unreachable")
