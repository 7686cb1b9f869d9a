"""Several GPUs: the makespan of 4 runs triggered at once with an inventory of 1 device (pool
gpu: 1 slot) against 2 devices (2 slots), in one run, on one live deployment.

Private AIRFLOW_HOME, SQLite, scheduler + dag-processor + api-server, LocalExecutor with 4
workers. The devices are fake (the CPU trainer needs no GPU): what is measured is how the pool
and the device lease let GPU stages overlap. Between the two phases only configs/devices.yaml
changes and `peftflow devices sync-pool` resizes the pool, as a user would do it. A run is the
smoke model trained 10 steps and evaluated on the smoke suites, triggered with force_rerun.
Prints both makespans, the ratio (expected well below 1.0, even on 2 cores: each stage uses one
thread) and the idle time of each device inside the GPU phase, from the lease log.
Usage: python bench/bench_devices.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "bench_devices"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_deployment(tmp: Path, runs: int) -> None:
    """A DAG folder with the project's DAG file and one spec: the smoke spec on a short
    profile, allowing `runs` active runs."""
    dags, specs = tmp / "project" / "dags", tmp / "project" / "dag_specs"
    dags.mkdir(parents=True)
    specs.mkdir()
    for path in (ROOT / "dags").glob("*.py"):
        shutil.copy(path, dags)
    profile = yaml.safe_load((ROOT / "configs/profiles/smoke_cpu.yaml").read_text())
    profile.update(name="bench-devices-cpu")
    profile["training"].update(epoch_steps=10, epoch_count=1)
    (tmp / "profile.yaml").write_text(yaml.safe_dump(profile))
    spec = yaml.safe_load((ROOT / "dag_specs/rwkv7_smoke_cpu.yaml").read_text())
    spec.update(dag_id=DAG_ID, training_profile=str(tmp / "profile.yaml"), max_active_runs=runs,
                description="bench/bench_devices.py")
    (specs / f"{DAG_ID}.yaml").write_text(yaml.safe_dump(spec))


def inventory(tmp: Path, devices: int) -> None:
    (tmp / "devices.yaml").write_text("devices:\n" + "".join(
        f'  - {{id: "{i}"}}\n' for i in range(devices)))


def run(argv: list[str], env: dict[str, str]) -> str:
    return subprocess.run(argv, check=True, env=env, capture_output=True, text=True).stdout


def phase(client: Any, runs: int) -> tuple[float, float, float]:
    """Trigger `runs` runs at once and wait for all; (start, makespan, end) in wall seconds."""
    start = time.time()
    with ThreadPoolExecutor(runs) as pool:
        run_ids = list(pool.map(lambda i: client.trigger(
            DAG_ID, {"note": f"bench {i}", "force_rerun": True}), range(runs)))
    for run_id in run_ids:
        state = client.wait(DAG_ID, run_id, timeout_s=3600, poll_s=1.0)
        assert state == "success", (run_id, state)
    end = time.time()
    return start, end - start, end


def idle_per_device(start: float, end: float, devices: int) -> dict[str, float]:
    """Seconds each device was not leased between the phase's first lease and its last
    release (the lease log of run/device_lease.py)."""
    from peftflow.run import device_lease

    held: dict[str, float] = {str(i): 0.0 for i in range(devices)}
    opened: dict[tuple[Any, Any], dict[str, Any]] = {}
    first, last = end, start
    for entry in device_lease.history():
        if not start <= entry["ts"] <= end:
            continue
        key = (entry["holder"]["pid"], entry["holder"]["since"])
        if entry["event"] == "acquired":
            opened[key] = entry
            first = min(first, entry["ts"])
        elif key in opened:
            began = opened.pop(key)["ts"]
            last = max(last, entry["ts"])
            for device in entry["ids"]:
                held[device] += entry["ts"] - began
    return {d: round((last - first) - h, 1) for d, h in held.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-devices-"))
    home = tmp / "airflow_home"
    os.environ.update({
        "AIRFLOW_HOME": str(home), "PEFTFLOW_AIRFLOW_HOME": str(home),
        "PEFTFLOW_API_PORT": str(free_port()), "PEFTFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "PEFTFLOW_RELEASES_ROOT": str(tmp / "releases"),
        "PEFTFLOW_AUDIT_LOG": str(tmp / "audit" / "audit.jsonl"),
        "PEFTFLOW_DEVICES_CONFIG": str(tmp / "devices.yaml"),
        "PEFTFLOW_DEVICE_LOCK_DIR": str(tmp / "device-locks"),
        "PEFTFLOW_ALLOWED_ROOTS": str(tmp), "PEFTFLOW_PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp / "project" / "dags"),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([{
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(tmp / "project" / "dags"), "refresh_interval": 0}}]),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    })
    write_deployment(tmp, args.runs)
    inventory(tmp, 1)
    from peftflow.airflow import services
    from peftflow.airflow.client import Client

    bin_dir = Path(sys.executable).parent
    dep = services.configure()
    env = services.service_env(dep)
    run([str(bin_dir / "airflow"), "db", "migrate"], env)
    run([str(bin_dir / "peftflow"), "devices", "sync-pool"], env)
    run([str(bin_dir / "airflow"), "dags", "reserialize"], env)
    services.start(dep)
    results = {}
    try:
        client = Client.from_settings()
        client.unpause(DAG_ID)
        for devices in (1, 2):
            inventory(tmp, devices)
            print(run([str(bin_dir / "peftflow"), "devices", "sync-pool"], env).strip())
            start, makespan, end = phase(client, args.runs)
            results[devices] = (makespan, idle_per_device(start, end, devices))
    finally:
        services.stop(dep)
        shutil.rmtree(tmp, ignore_errors=True)
    (one, idle_one), (two, idle_two) = results[1], results[2]
    print(f"{args.runs} runs triggered at once (smoke model, 10 steps), LocalExecutor 4 workers")
    print(f"  1 device  (pool gpu 1 slot)   makespan {one:7.1f} s   idle in GPU phase {idle_one}")
    print(f"  2 devices (pool gpu 2 slots)  makespan {two:7.1f} s   idle in GPU phase {idle_two}")
    print(f"  ratio 2 devices / 1 device: {two / one:.2f} (expected well below 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
