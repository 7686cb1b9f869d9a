"""Several GPUs, live: a deployment whose inventory lists two (fake) devices and whose pool gpu
has 2 slots. Four runs at once keep both devices busy together and never put two holders on
one device; a run whose profile trains on both devices runs only while both are free. Judged
from the lease log the stages write (run/device_lease.py) and the task instances in the DB.

Runs on its own with `pytest -m gpus` (about 4 minutes with the deployment)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from live_harness import Live
from live_scenarios import FAKE_DEVICES, GPUS, GPUS_PAIR

pytestmark = [pytest.mark.live, pytest.mark.gpus]


@dataclass(frozen=True)
class Hold:
    device: str
    start: float
    end: float
    run_id: str
    stage: str
    ids: tuple[str, ...]


def holds(live: Live) -> list[Hold]:
    """Each device's holds, from the lease log: an acquired line to its released line."""
    from peftflow.run import device_lease

    opened: dict[tuple[int, str], dict[str, Any]] = {}
    found: list[Hold] = []
    for entry in device_lease.history():
        key = (entry["holder"]["pid"], entry["holder"]["since"])
        if entry["event"] == "acquired":
            opened[key] = entry
        elif key in opened:
            start = opened.pop(key)
            holder = start["holder"]
            found += [Hold(d, start["ts"], entry["ts"], holder.get("run_id", "by hand"),
                           holder["stage"], tuple(entry["ids"])) for d in entry["ids"]]
    assert not opened, f"leases never released: {opened}"
    return found


def overlaps(a: Hold, b: Hold) -> bool:
    return a.start < b.end and b.start < a.end


def time_with_at_least(spans: list[Hold], devices: int) -> float:
    """Seconds during which at least `devices` distinct devices were held at once."""
    edges = sorted([(h.start, 1) for h in spans] + [(h.end, -1) for h in spans])
    held = total = 0.0
    last = edges[0][0] if edges else 0.0
    for t, step in edges:
        if held >= devices:
            total += t - last
        held += step
        last = t
    return total


def trigger_all(live: Live, dags: list[str]) -> list[tuple[str, str]]:
    live.client.login()  # once, before the threads share the token
    with ThreadPoolExecutor(len(dags)) as pool:
        run_ids = list(pool.map(
            lambda ia: live.trigger_rest(ia[1], {"note": f"gpus {ia[0]}", "force_rerun": True},
                                         retry_5xx=3), enumerate(dags)))
    return list(zip(dags, run_ids, strict=True))


def test_four_runs_keep_both_devices_busy_and_no_device_ever_has_two_holders(
        gpu_deployment: Live, measure: Callable[..., None]) -> None:
    live = gpu_deployment
    t0 = time.time()
    runs = trigger_all(live, [GPUS] * 4)
    for dag_id, run_id in runs:
        live.wait_for(dag_id, run_id, "success", timeout=900 - (time.time() - t0))
    makespan = time.time() - t0
    found = [h for h in holds(live) if h.start >= t0]
    ours = {run_id for _, run_id in runs}
    assert {h.run_id for h in found} == ours
    assert len(found) == 8  # train + evaluate of 4 runs, one device each
    for a in found:
        for b in found:
            if a is not b and a.device == b.device:
                assert not overlaps(a, b), f"device {a.device} held twice: {a} {b}"
    window = max(h.end for h in found) - min(h.start for h in found)
    both = time_with_at_least(found, 2)
    any_held = time_with_at_least(found, 1)
    assert {h.device for h in found} == set(FAKE_DEVICES)
    assert both / window > 0.5, (both, window)  # both cards busy most of the GPU phase
    # Every run released; each GPU stage's status.json names the card it had.
    for dag_id, run_id in runs:
        train = live.stage_status(dag_id, run_id, "train_adapter")["devices"]
        evaluate = live.stage_status(dag_id, run_id, "evaluate_adapter")["devices"]
        assert train["ids"][0] in FAKE_DEVICES and evaluate["ids"][0] in FAKE_DEVICES
    local = sum(live.stage_status(d, r, "train_adapter")["devices"]["ids"]
                == live.stage_status(d, r, "evaluate_adapter")["devices"]["ids"] for d, r in runs)
    busy = {d: sum(h.end - h.start for h in found if h.device == d) for d in FAKE_DEVICES}
    idle_gaps = {d: round(window - busy[d], 1) for d in FAKE_DEVICES}
    measure("gpus: 4 runs on 2 devices", live.kind, runs=4, makespan_s=round(makespan, 1),
            gpu_window_s=round(window, 1), both_devices_busy_s=round(both, 1),
            both_busy_fraction_of_gpu_window=round(both / window, 3),
            both_busy_fraction_of_makespan=round(both / makespan, 3),
            any_device_busy_s=round(any_held, 1), idle_per_device_s=idle_gaps,
            eval_on_training_device=f"{local}/4")


def test_a_two_device_training_runs_only_while_both_devices_are_free(
        gpu_deployment: Live, measure: Callable[..., None]) -> None:
    live = gpu_deployment
    t0 = time.time()
    runs = trigger_all(live, [GPUS, GPUS_PAIR, GPUS])
    for dag_id, run_id in runs:
        live.wait_for(dag_id, run_id, "success", timeout=900 - (time.time() - t0))
    found = [h for h in holds(live) if h.start >= t0]
    pair_run = next(r for d, r in runs if d == GPUS_PAIR)
    pair = [h for h in found if h.run_id == pair_run and h.stage == "train_adapter"]
    assert sorted(h.device for h in pair) == sorted(FAKE_DEVICES)
    assert all(h.ids == FAKE_DEVICES for h in pair)
    others = [h for h in found if h.run_id != pair_run or h.stage != "train_adapter"]
    assert others, "the other runs held no device"
    for h in pair:
        for other in others:
            assert not overlaps(h, other), f"{other} ran beside the 2-device training {h}"
    ti = live.task_instances(GPUS_PAIR, pair_run)["train_adapter"]
    assert ti["pool"] == "gpu" and ti["pool_slots"] == 2, ti
    status = live.stage_status(GPUS_PAIR, pair_run, "train_adapter")
    assert status["devices"]["ids"] == list(FAKE_DEVICES)
    measure("gpus: a 2-device training beside 1-device runs", live.kind,
            pair_train_s=round(pair[0].end - pair[0].start, 1),
            pair_waited_s=status["devices"].get("waited_s"),
            run_wall_s=round(time.time() - t0, 1))


def test_the_lease_log_and_devices_command_show_the_holders(gpu_deployment: Live) -> None:
    out = gpu_deployment.peftflow("devices").stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "MEMORY", "STATE"]
    assert [line.split()[2] for line in lines[1:3]] == ["free", "free"]
    assert "2 device(s) from" in out and str(Path(gpu_deployment.root)) in out
