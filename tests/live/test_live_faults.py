"""Faults under the live scheduler (SQLite): kill -9 of training, kill of the scheduler, a
stage that exits 0 without its artifact, disk full on the artifact root, a corrupted audit
log. None of them may produce a release."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from live_harness import Live, kill_groups
from live_scenarios import DISK_FULL, KILL_SCHEDULER, KILL_TRAIN, NO_ARTIFACT

pytestmark = [pytest.mark.live,
              pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)]
# The old scheduler must look dead to the new one ([scheduler] scheduler_health_check_threshold,
# 30 s by default) for the start-up sweep to reset the tasks it had running.
SCHEDULER_DOWN_S = 35
DISK_FULL_SIZE = "320k"  # prepare's binidx fits (about 200 KiB), a 164 KiB checkpoint does not


def _tries(live: Live, dag_id: str, run_id: str) -> dict[str, int]:
    return {t: int(ti["try_number"]) for t, ti in live.task_instances(dag_id, run_id).items()}


def _started(live: Live, run_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in live.audit_events(run_id):
        if e["event"] == "task_started":
            counts[e["stage"]] = counts.get(e["stage"], 0) + 1
    return counts


def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint_and_succeeds(
        deployment: Live, measure: Callable[..., None]) -> None:
    live = deployment
    run_id = live.trigger_rest(KILL_TRAIN, {"force_rerun": True, "note": "fault: kill -9"})
    train_dir = live.run_dir(KILL_TRAIN, run_id) / "train_adapter"
    live.wait_path("rwkv-0.pth", timeout=400, under=train_dir)
    pids = live.stage_pids(run_id)
    assert pids, "no process of the training stage found by its PEFTFLOW_RUN_ID"
    groups = kill_groups(pids)
    killed_at = time.monotonic()
    time.sleep(0.5)  # let the group die before looking at what it left
    at_kill = sorted(p.name for p in train_dir.glob("rwkv-*.pth"))
    took = live.wait_for(KILL_TRAIN, run_id, "success", timeout=600)

    tries = _tries(live, KILL_TRAIN, run_id)
    assert tries["train_adapter"] == 2 and tries["prepare_dataset"] == 1, tries
    metrics = live.stage_status(KILL_TRAIN, run_id, "train_adapter")["metrics"]
    assert metrics["resumed_from_epoch"] == len(at_kill) - 1, (metrics, at_kill)
    assert metrics["steps"] == 30 and metrics["epochs_completed"] == 3  # nothing lost
    assert metrics["trained_steps_this_attempt"] < 30  # nor trained twice
    train_log = (train_dir / "train_log.txt").read_text()
    assert f"resumed from rwkv-{len(at_kill) - 1}.pth" in train_log, train_log[-2000:]
    losses = [json.loads(line) for line in (train_dir / "loss_data.jsonl").read_text()
              .splitlines() if line.strip()]
    assert [r.get("resumed_from_epoch") for r in losses if "resumed_from_epoch" in r] == \
        [len(at_kill) - 1]
    release = live.release_for(KILL_TRAIN, run_id)
    first, second = sorted((a for a in live.attempts(KILL_TRAIN, [run_id])
                            if a["task_id"] == "train_adapter"), key=lambda a: a["try_number"])
    measure("fault kill -9 of training", live.kind, killed_groups=len(groups),
            checkpoints_at_kill=",".join(at_kill), train_tries=tries["train_adapter"],
            resumed_from_epoch=metrics["resumed_from_epoch"],
            steps_retrained=metrics["trained_steps_this_attempt"],
            retry_started_after_s=round((second["start"] - first["end"]).total_seconds(), 1),
            kill_to_success_s=round(time.monotonic() - killed_at, 1),
            run_wall_s=round(took, 1), release=release["version"], outcome="success, resumed")


def test_scheduler_killed_mid_run_and_restarted_finishes_the_run_without_repeating_tasks(
        deployment: Live, measure: Callable[..., None]) -> None:
    from peftflow.airflow import services

    live = deployment
    run_id = live.trigger_rest(KILL_SCHEDULER, {"force_rerun": True,
                                                "note": "fault: scheduler kill"})
    live.wait_path("rwkv-0.pth", timeout=400,
                   under=live.run_dir(KILL_SCHEDULER, run_id) / "train_adapter")
    states = {t: ti["state"] for t, ti in live.task_instances(KILL_SCHEDULER, run_id).items()}
    finished = sorted(t for t, s in states.items() if s == "success")
    assert finished == ["prepare_dataset"] and states["train_adapter"] == "running", states
    pid = live.service_pid("scheduler")
    os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # we started it: reap it, or it lingers as a zombie "running"
    killed_at = time.monotonic()
    orphan_lived = None
    while time.monotonic() - killed_at < SCHEDULER_DOWN_S:
        if orphan_lived is None and not live.stage_pids(run_id):
            orphan_lived = round(time.monotonic() - killed_at, 1)
        time.sleep(0.5)
    orphans = live.stage_pids(run_id)
    restarted_at = time.monotonic()
    services.start(live.deployment(), names=("scheduler",))
    took = live.wait_for(KILL_SCHEDULER, run_id, "success", timeout=900)

    tries = _tries(live, KILL_SCHEDULER, run_id)
    started = _started(live, run_id)
    for task in finished:
        assert tries[task] == 1, tries
        assert started[task] == 1, started
    release = live.release_for(KILL_SCHEDULER, run_id)
    # A stage that outlived its watcher is stopped by the retry (lease), never left running.
    stopped = [e for e in live.audit_events(run_id) if e["event"] == "orphan_stopped"]
    assert not live.stage_pids(run_id)
    assert all(e["stage"] == "train_adapter" for e in stopped), stopped
    measure("fault scheduler kill -9 + restart", live.kind, finished_before_kill=finished,
            tries=tries, task_started_events=started, orphan_stopped_events=len(stopped),
            stage_orphan_lived_s=orphan_lived if not orphans else f">{SCHEDULER_DOWN_S}",
            scheduler_down_s=round(restarted_at - killed_at, 1),
            restart_to_success_s=round(took, 1), release=release["version"], outcome="success")


def test_a_stage_that_exits_0_without_its_artifact_fails_and_nothing_is_released(
        deployment: Live, measure: Callable[..., None]) -> None:
    live = deployment
    run_id = live.trigger_rest(NO_ARTIFACT, {"force_rerun": True, "note": "fault: no artifact"})
    took = live.wait_for(NO_ARTIFACT, run_id, "failed", timeout=300)
    tis = live.task_instances(NO_ARTIFACT, run_id)
    assert tis["prepare_dataset"]["state"] == "failed"
    assert tis["prepare_dataset"]["try_number"] == 1  # permanent: no retry burned
    assert tis["train_adapter"]["state"] == "upstream_failed"
    log = live.task_log(NO_ARTIFACT, run_id, "prepare_dataset", 1)
    assert "exited 0 but its artifacts are not valid" in log, log[-3000:]
    failed = [e for e in live.audit_events(run_id) if e["event"] == "task_failed"]
    assert [e["details"].get("phase") for e in failed] == ["outputs"]
    assert live.releases_of(run_id) == []
    measure("fault stage exits 0 without artifact", live.kind, failed_task="prepare_dataset",
            tries=1, run_wall_s=round(took, 1), outcome="failed, no release")


def test_disk_full_on_the_artifact_root_fails_cleanly_and_accepts_no_half_artifact(
        deployment: Live, measure: Callable[..., None]) -> None:
    from peftflow.store import status_record as status

    live = deployment
    target = live.artifacts / DISK_FULL
    target.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_FULL_SIZE},mode=0755",
                              "tmpfs", str(target)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on the artifact root here (needs root or "
                    f"CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    live.mounts.append(target)
    try:
        run_id = live.trigger_rest(DISK_FULL, {"force_rerun": True, "note": "fault: disk full"})
        took = live.wait_for(DISK_FULL, run_id, "failed", timeout=600)
        tis = live.task_instances(DISK_FULL, run_id)
        hit = {}
        for task, ti in tis.items():
            for n in range(1, int(ti["try_number"] or 0) + 1):
                if "no space left on device" in live.task_log(DISK_FULL, run_id, task, n).lower():
                    hit[f"{task}#{n}"] = ti["state"]
        assert hit, live.report(DISK_FULL, run_id)
        run_dir = live.run_dir(DISK_FULL, run_id)
        accepted = []
        for stage_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            assert not [p.name for p in stage_dir.iterdir() if p.name.startswith(".tmp-")]
            doc_path = stage_dir / "status.json"
            doc = json.loads(doc_path.read_text()) if doc_path.exists() else None
            if doc is not None and doc["status"] == "success":
                for ref in status.outputs_of(status.read(stage_dir)).values():
                    ref.verify()  # an accepted stage is complete: every output verifies
                accepted.append(stage_dir.name)
            elif stage_dir.name in tis and tis[stage_dir.name]["state"] == "failed":
                # Nothing a later stage could take for good: no success, no outputs listed.
                assert doc is None or (doc["status"] != "success" and not doc["outputs"]), doc
        assert live.releases_of(run_id) == []
        df = shutil.disk_usage(target)
        measure("fault disk full on the artifact root", live.kind, tmpfs=DISK_FULL_SIZE,
                enospc_in=sorted(hit), accepted_stages=accepted,
                tries={t: ti["try_number"] for t, ti in tis.items()},
                tmpfs_free_bytes=df.free, run_wall_s=round(took, 1),
                outcome="failed, no release")
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
        live.mounts.remove(target)


def test_a_corrupted_audit_log_is_detected_naming_the_line(
        deployment: Live, measure: Callable[..., None], tmp_path: Path) -> None:
    """One byte of a copy of the deployment's log (with its head file) is changed: verify
    exits 1 naming that line. The deployment's own log stays intact for the other tests."""
    live = deployment
    copy = tmp_path / "audit.jsonl"
    shutil.copy(live.audit_log, copy)
    shutil.copy(f"{live.audit_log}.head", f"{copy}.head")
    ok = live.peftflow("audit", "verify", "--log", str(copy), check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = copy.read_bytes().split(b"\n")
    victim = len(lines) // 2
    where = lines[victim].index(b'"actor":"') + len(b'"actor":"')
    old = lines[victim][where:where + 1]
    lines[victim] = lines[victim][:where] + (b"X" if old != b"X" else b"Y") + \
        lines[victim][where + 1:]
    copy.write_bytes(b"\n".join(lines))
    bad = live.peftflow("audit", "verify", "--log", str(copy), check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"{copy}:{victim + 1}: hash mismatch" in bad.stdout, bad.stdout
    measure("fault corrupted audit log", live.kind, events=len(lines) - 1,
            edited_line=victim + 1, verify_exit=bad.returncode,
            first_problem=bad.stdout.splitlines()[0][-80:], outcome="detected")
