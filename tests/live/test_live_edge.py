"""A second workstation, live, on this box: the edge deployment profile (private PostgreSQL,
hybrid LocalExecutor + EdgeExecutor, the Edge API on the api-server) and two Edge workers
started with `peftflow worker start`, distinct hostnames and one fake device each. GPU stages
must run on the workers and CPU stages on the main host's LocalExecutor, both workers must be
busy together, no device may have two holders; a worker killed mid-training must cost only the
retry, which resumes from the checkpoint on the other worker.

Runs on its own with `pytest -m edge`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from live_harness import Live, descendants, kill_groups, procs_with
from live_scenarios import EDGE, EDGE_FAULT, FAKE_DEVICES
from test_live_gpus import holds, overlaps, trigger_all

pytestmark = [pytest.mark.live, pytest.mark.edge, pytest.mark.postgres]

WORKERS = {"edge-a": FAKE_DEVICES[0], "edge-b": FAKE_DEVICES[1]}
GPU_TASKS = ("train_adapter", "evaluate_adapter")
CPU_TASKS = ("prepare_dataset", "release_gate", "release_adapter")


def start_worker(live: Live, name: str, device: str) -> None:
    live.peftflow("worker", "start", "--api-url",
                  f"http://127.0.0.1:{live.env['PEFTFLOW_API_PORT']}", "--gpus", device,
                  "--hostname", name, "--wait", "180", timeout=240)


def worker_pids(live: Live, name: str) -> list[int]:
    """The worker (its pid file) and every process below it: task supervisors and stages,
    some in groups and sessions of their own. (The environment marker cannot find the worker
    or a supervisor: setproctitle overwrites their environment.)"""
    pid = int((live.home / "edge-workers" / name / "worker.pid").read_text().strip())
    marked = procs_with({"PEFTFLOW_HOST": name, "PEFTFLOW_ARTIFACT_ROOT": str(live.artifacts)})
    return sorted({pid, *descendants(pid), *marked})


@pytest.fixture(scope="module")
def workers(edge_deployment: Live) -> Iterator[Live]:
    live = edge_deployment
    t0 = time.monotonic()
    for name, device in WORKERS.items():
        start_worker(live, name, device)
    live.timings["workers_start"] = round(time.monotonic() - t0, 1)
    try:
        yield live
    finally:
        for name in WORKERS:
            live.peftflow("worker", "stop", "--hostname", name, "--wait", "30", check=False,
                          timeout=90)


def ti_rows(live: Live, dag_id: str, run_ids: list[str]) -> list[dict[str, Any]]:
    cols = "task_id, run_id, try_number, state, hostname, executor, queue, start_date, end_date"
    rows = live.db_rows(f"SELECT {cols} FROM task_instance WHERE dag_id = ? UNION ALL "
                        f"SELECT {cols} FROM task_instance_history WHERE dag_id = ?",
                        (dag_id, dag_id))
    keys = cols.split(", ")
    return [dict(zip(keys, r, strict=True)) for r in rows if r[1] in run_ids]


@dataclass(frozen=True)
class Wave:
    runs: list[tuple[str, str]]
    makespan: float


@pytest.fixture(scope="module")
def wave(workers: Live) -> Wave:
    live = workers
    t0 = time.time()
    runs = trigger_all(live, [EDGE] * 4)
    for dag_id, run_id in runs:
        live.wait_for(dag_id, run_id, "success", timeout=900 - (time.time() - t0))
    return Wave(runs, time.time() - t0)


def test_gpu_stages_run_on_the_workers_and_cpu_stages_on_the_main_host(
        wave: Wave, workers: Live, measure: Callable[..., None]) -> None:
    live = workers
    rows = ti_rows(live, EDGE, [r for _, r in wave.runs])
    main = socket.getfqdn()
    for row in rows:
        if row["task_id"] in GPU_TASKS:
            assert row["executor"] == "EdgeExecutor" and row["queue"] == "gpu", row
            assert row["hostname"] in WORKERS, row
        elif row["task_id"] in CPU_TASKS:
            assert row["executor"] in (None, "LocalExecutor"), row
            assert row["hostname"] not in WORKERS, (row, main)
    for _, run_id in wave.runs:  # every stage's lease names the worker that ran it
        for stage in GPU_TASKS:
            devices = live.stage_status(EDGE, run_id, stage)["devices"]
            assert WORKERS[devices["host"]] == devices["ids"][0], devices
    spans = {name: [(r["start_date"], r["end_date"]) for r in rows
                    if r["task_id"] in GPU_TASKS and r["hostname"] == name] for name in WORKERS}
    together = any(a0 < b1 and b0 < a1 for a0, a1 in spans["edge-a"] for b0, b1 in
                   spans["edge-b"])
    assert together, f"the workers never ran at the same time: {spans}"
    measure("edge: 4 runs at once, 2 Edge workers of 1 device", live.kind,
            makespan_s=round(wave.makespan, 1),
            gpu_tasks_per_worker={n: len(s) for n, s in spans.items()},
            workers_start_s=live.timings.get("workers_start"))


def test_no_device_ever_has_two_holders_and_every_run_ends_as_on_one_host(
        wave: Wave, workers: Live) -> None:
    live = workers
    found = [h for h in holds(live) if h.run_id in {r for _, r in wave.runs}]
    assert len(found) == 2 * len(wave.runs)
    for a in found:
        for b in found:
            if a is not b and a.device == b.device:
                assert not overlaps(a, b), f"device {a.device} held twice: {a} {b}"
    for dag_id, run_id in wave.runs:
        gate = live.stage_status(dag_id, run_id, "release_adapter")
        assert gate["status"] in ("success", "blocked"), gate


def test_a_worker_in_maintenance_takes_no_new_gpu_task_until_it_resumes(
        wave: Wave, workers: Live) -> None:
    live = workers
    live.peftflow("worker", "drain", "--hostname", "edge-b", "--comment", "live test")
    try:
        runs = [r for _, r in trigger_all(live, [EDGE, EDGE])]  # 4 GPU tasks, 1 free worker
        for run_id in runs:
            live.wait_for(EDGE, run_id, "success", timeout=400)
        hosts = [r["hostname"] for r in ti_rows(live, EDGE, runs) if r["task_id"] in GPU_TASKS]
        assert hosts == ["edge-a"] * 4, hosts
    finally:
        live.peftflow("worker", "resume", "--hostname", "edge-b")


def test_workers_that_lose_the_api_server_for_a_while_reconnect_and_take_work_again(
        wave: Wave, workers: Live, measure: Callable[..., None]) -> None:
    from peftflow.airflow import services

    live = workers
    dep = live.deployment()
    pids = {n: int((live.home / "edge-workers" / n / "worker.pid").read_text()) for n in WORKERS}
    services.stop(dep, ("api-server",))
    time.sleep(3 * 10)  # three of the workers' heartbeats fail
    services.start(dep, ("api-server",), wait_s=120)
    for pid in pids.values():
        os.kill(pid, 0)  # still running (ProcessLookupError otherwise)
    runs = [r for _, r in trigger_all(live, [EDGE, EDGE])]
    for run_id in runs:
        live.wait_for(EDGE, run_id, "success", timeout=400)
    hosts = {r["hostname"] for r in ti_rows(live, EDGE, runs) if r["task_id"] in GPU_TASKS}
    assert hosts <= set(WORKERS) and hosts, hosts
    measure("edge: api-server down 30 s", live.kind, workers_alive=len(pids),
            gpu_task_hosts=sorted(hosts))


def test_a_worker_killed_during_training_costs_only_the_retry_on_the_other_worker(
        workers: Live, measure: Callable[..., None]) -> None:
    live = workers
    run_id = live.trigger_rest(EDGE_FAULT, {"note": "edge kill", "force_rerun": True})
    run_dir = live.run_dir(EDGE_FAULT, run_id)
    live.wait_path("rwkv-0.pth", timeout=400, under=run_dir / "train_adapter")
    ti = live.task_instances(EDGE_FAULT, run_id)["train_adapter"]
    victim = ti["hostname"]
    assert victim in WORKERS, ti
    killed_at = time.time()
    doomed = worker_pids(live, victim)
    for pid in doomed:  # the machine is gone at once: nothing of it may report the failure
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    kill_groups(doomed)
    survivor = next(n for n in WORKERS if n != victim)
    live.wait_for(EDGE_FAULT, run_id, "success", timeout=900)
    rows = ti_rows(live, EDGE_FAULT, [run_id])
    train = sorted((r for r in rows if r["task_id"] == "train_adapter"),
                   key=lambda r: r["try_number"])
    assert [r["hostname"] for r in train] == [victim, survivor], train
    assert train[-1]["state"] == "success"
    retry_start = train[-1]["start_date"].timestamp()
    first_end = train[0]["end_date"].timestamp() if train[0]["end_date"] else None
    for task in (*CPU_TASKS, "evaluate_adapter"):
        assert len([r for r in rows if r["task_id"] == task]) == 1, task  # nothing reran
    metrics = live.stage_status(EDGE_FAULT, run_id, "train_adapter")["metrics"]
    assert metrics["resumed_from_epoch"] >= 0 and metrics["trained_steps_this_attempt"] < 30
    assert metrics["steps"] == 30, metrics  # nothing lost, nothing trained twice
    start_worker(live, victim, WORKERS[victim])  # back for the teardown's drain
    measure("edge: a worker killed during train_adapter", live.kind,
            victim=victim, kill_to_retry_start_s=round(retry_start - killed_at, 1),
            first_try=train[0]["state"],
            kill_to_first_try_end_s=round(first_end - killed_at, 1) if first_end else None,
            resumed_from_epoch=metrics["resumed_from_epoch"],
            steps_retrained=metrics["trained_steps_this_attempt"])
