"""Load: five runs triggered at once all complete, and the gpu pool (1 slot) never runs two
tasks at the same moment, judged from the task instances' times in the metadata DB."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from live_harness import Live
from live_scenarios import LOAD

pytestmark = pytest.mark.live
RUNS = 5


def max_concurrency(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans open at one moment (an end and a start at the same instant: 1)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                   key=lambda edge: (edge[0], edge[1]))
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def gaps(spans: list[tuple[datetime, datetime]]) -> list[float]:
    """Seconds from one span's end to the next span's start, in time order."""
    ordered = sorted(spans)
    return [(b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(ordered)]


def test_max_concurrency_counts_touching_spans_once() -> None:
    t = [datetime(2026, 1, 1, 0, 0, s) for s in range(6)]
    assert max_concurrency([(t[0], t[2]), (t[2], t[4])]) == 1
    assert max_concurrency([(t[0], t[3]), (t[2], t[4]), (t[1], t[5])]) == 3
    assert gaps([(t[2], t[4]), (t[0], t[1])]) == [1.0]


@pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)
def test_five_runs_at_once_complete_and_the_gpu_pool_never_runs_two_tasks(
        deployment: Live, measure: Callable[..., None]) -> None:
    deployment.client.login()  # once, before the threads share the token
    t0 = time.monotonic()
    with ThreadPoolExecutor(RUNS) as pool:
        run_ids = list(pool.map(
            lambda i: deployment.trigger_rest(LOAD, {"note": f"load {i}", "force_rerun": True},
                                              retry_5xx=3),
            range(RUNS)))
    triggered_in = time.monotonic() - t0
    assert sorted(r["dag_run_id"] for r in deployment.runs(LOAD)) == sorted(run_ids)
    for run_id in run_ids:
        deployment.wait_for(LOAD, run_id, "success", timeout=1200 - (time.monotonic() - t0))
    wall = time.monotonic() - t0

    attempts = deployment.attempts(LOAD, run_ids)
    gpu = [a for a in attempts if a["pool"] == "gpu" and a["start"] and a["end"]]
    # Every GPU task of the five runs really ran (force_rerun), each in the gpu pool.
    assert sorted(a["task_id"] for a in gpu) == sorted(
        ["train_adapter"] * RUNS + ["evaluate_adapter"] * RUNS), gpu
    started = [e for e in deployment.audit_events() if e["event"] == "task_started"
               and e.get("run_id") in run_ids and e.get("stage") == "train_adapter"]
    assert len(started) == RUNS
    spans = [(a["start"], a["end"]) for a in gpu]
    # All GPU work of the deployment in that window, whatever DAG it belongs to.
    window = [(a["start"], a["end"]) for a in _all_gpu(deployment)
              if a["end"] >= min(s for s, _ in spans) and a["start"] <= max(e for _, e in spans)]
    peak = max_concurrency(window)
    idle = gaps(spans)
    busy = sum((e - s).total_seconds() for s, e in spans)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    stats: dict[str, Any] = {
        "runs": RUNS, "triggered_in_s": round(triggered_in, 2),
        "trigger_http_5xx_retried": len(deployment.server_errors),
        "trigger_5xx_causes": [e[:300] for e in deployment.server_errors], "wall_s": round(wall, 1),
        "gpu_tasks": len(spans), "max_gpu_concurrency": peak,
        "gap_min_s": round(min(idle), 2), "gap_median_s": round(statistics.median(idle), 2),
        "gap_max_s": round(max(idle), 2),
        "gpu_busy_fraction": round(busy / (last - first).total_seconds(), 3),
    }
    measure("load: 5 runs at once, gpu pool", deployment.kind, **stats)
    print("gpu tasks in order:")
    for a in sorted(gpu, key=lambda a: a["start"]):
        print(f"  {a['start']:%H:%M:%S.%f} -> {a['end']:%H:%M:%S.%f} {a['task_id']:<17} "
              f"{a['run_id']}")
    assert peak == 1, f"{peak} GPU tasks overlapped"
    assert min(idle) >= 0


def _all_gpu(live: Live) -> list[dict[str, Any]]:
    rows = live.db_rows("SELECT dag_id FROM dag", ())
    spans = []
    for (dag_id,) in rows:
        spans += [a for a in live.attempts(dag_id)
                  if a["pool"] == "gpu" and a["start"] and a["end"]]
    return spans
