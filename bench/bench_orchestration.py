"""Orchestration overhead: the smoke DAG under the live scheduler vs the same four stage
scripts run back to back by hand, in one run, on a private AIRFLOW_HOME.

By hand: prepare, train, evaluate, the gate decision, release, each with exactly the argv the
operators would build (peftflow.run.plan). Live: scheduler + dag-processor + api-server with
LocalExecutor on SQLite, triggered over REST with force_rerun (so nothing is reused), timed
from trigger to the run's end. Prints both wall times, the ratio and the overhead per task.
Target: ratio < 1.5. Usage: python bench/bench_orchestration.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "rwkv7_smoke_cpu"
TASKS = 5  # prepare, train, evaluate, release_gate, release


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def by_hand(tmp: Path) -> float:
    """The four scripts back to back, plus the gate decision, as an operator would run them."""
    from peftflow.release import gate
    from peftflow.run.plan import build
    from peftflow.run.runinfo import RunInfo
    from peftflow.settings import child_env
    from peftflow.spec import validate
    from peftflow.spec.model import Stage
    from peftflow.store import status_record as status

    spec = validate.load_spec(ROOT / "dag_specs" / f"{DAG_ID}.yaml")
    run = RunInfo(DAG_ID, "by_hand", "bench", 1, "bench", "manual", {}, {})
    upstream: dict[Stage, dict] = {}
    t0 = time.monotonic()
    for stage in (Stage.PREPARE, Stage.TRAIN, Stage.EVALUATE, Stage.RELEASE):
        extra = {}
        if stage is Stage.RELEASE:
            quality = upstream[Stage.PREPARE]["outputs"]["quality"]["path"]
            verdict = upstream[Stage.EVALUATE]["outputs"]["verdict"]["path"]
            decision = gate.decide(Path(quality), Path(verdict), allow_warn=True)
            extra["gate_decision"] = str(gate.write_decision(
                decision, run.stage_dir("release_gate") / "gate_decision.json"))
        the_plan = build(stage, spec, run, upstream, extra)
        subprocess.run(the_plan.argv, check=True, cwd=ROOT, env=child_env({}),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        doc = status.read(the_plan.out_dir)
        upstream[stage] = {"status_path": str(the_plan.out_dir / "status.json"),
                           "outputs": {o["name"]: {k: v for k, v in o.items() if k != "name"}
                                       for o in doc["outputs"]}}
    return time.monotonic() - t0


def live(tmp: Path) -> tuple[float, dict[str, float]]:
    from peftflow.airflow import services
    from peftflow.airflow.client import Client

    airflow = str(Path(sys.executable).parent / "airflow")
    dep = services.configure()
    env = services.service_env(dep)
    for argv in ([airflow, "db", "migrate"], [airflow, "pools", "import",
                                                str(ROOT / "configs" / "pools.json")],
                 [airflow, "dags", "reserialize"]):
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    services.start(dep)
    try:
        client = Client.from_settings()
        client.unpause(DAG_ID)
        t0 = time.monotonic()
        run_id = client.trigger(DAG_ID, {"note": "bench", "force_rerun": True})
        state = client.wait(DAG_ID, run_id, timeout_s=1800, poll_s=0.5)
        wall = time.monotonic() - t0
        assert state == "success", state
        tasks = {ti["task_id"]: ti["duration"] or 0.0
                 for ti in client.task_instances(DAG_ID, run_id)}
        return wall, tasks
    finally:
        services.stop(dep)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    os.environ.update({
        "AIRFLOW_HOME": str(tmp / "airflow_home"), "PEFTFLOW_AIRFLOW_HOME": str(tmp / "airflow_home"),
        "PEFTFLOW_API_PORT": str(free_port()), "PEFTFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "PEFTFLOW_RELEASES_ROOT": str(tmp / "releases"),
        "PEFTFLOW_AUDIT_LOG": str(tmp / "audit" / "audit.jsonl"),
        "PEFTFLOW_DEVICE_LOCK_DIR": str(tmp / "device-locks"),
    })
    hand = by_hand(tmp)
    wall, tasks = live(tmp)
    print(f"smoke pipeline ({TASKS} tasks), one run each, same machine and inputs")
    print(f"  by hand (scripts back to back)   {hand:7.1f} s")
    print(f"  live scheduler (trigger -> end)  {wall:7.1f} s")
    print(f"  ratio {wall / hand:.2f} (target < 1.5); overhead {(wall - hand) / TASKS:.1f} s per "
          "task (scheduling, task start, contract checks)")
    print("  task durations in Airflow: " + json.dumps({k: round(v, 1) for k, v in tasks.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
