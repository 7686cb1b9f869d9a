"""`make smoke`: the smoke pipeline end to end under the real Airflow services.

Starts scheduler, dag-processor and api-server (LocalExecutor, the SQLite file DB of the
project's AIRFLOW_HOME) if they are not running, triggers the smoke DAG through the REST
API, waits for it, and prints the release manifest, the audit verification and where the UI
is. Rerunning is cheap: unchanged stages are reused and the same adapter is not released twice.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from peftflow import entry, settings
from peftflow.airflow import services
from peftflow.airflow.client import Client
from peftflow.release import registry
from peftflow.store import audit_verify

DAG_ID = "rwkv7_smoke_cpu"
PROFILE = "smoke-cpu"


def _follow(client: Client, run_id: str, timeout_s: float) -> str:
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ti in client.task_instances(DAG_ID, run_id):
            state = str(ti.get("state"))
            if seen.get(ti["task_id"]) != state and state not in ("None", "none"):
                seen[ti["task_id"]] = state
                print(f"  {ti['task_id']:<18} {state}", flush=True)
        state = str(client.run(DAG_ID, run_id)["state"])
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    return "timeout"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftflow.smoke.run", description=__doc__)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")
    parser.add_argument("--stop", action="store_true", help="stop the services afterwards")
    parser.add_argument("--force-rerun", action="store_true", help="do not reuse stages")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    dep = services.deployment()
    services.start(dep)
    client = Client.from_settings()
    client.unpause(DAG_ID)
    run_id = client.trigger(DAG_ID, {"note": "make smoke", "force_rerun": args.force_rerun})
    print(f"triggered {DAG_ID} run {run_id}")
    state = _follow(client, run_id, args.timeout)
    elapsed = time.monotonic() - t0
    print(f"run {state} in {elapsed:.0f} s")
    note = str(client.run(DAG_ID, run_id).get("note") or "")
    if note:  # what the run_summary task wrote; the UI shows it on the run
        print("run note:\n  " + note.replace("**", "").replace("\n", "\n  "))
    problems = audit_verify.verify()
    print(f"audit trail {settings.get().audit_log}: "
          f"{'OK, chain intact' if not problems else f'{len(problems)} problem(s)'}")
    for problem in problems:
        print(f"  {problem}")
    release = registry.current_release(PROFILE) if state == "success" else None
    if release is not None:
        print(f"release {PROFILE} {release.version}: {release.manifest_path}")
        print(f"report: {release.dir / 'report.md'}")
    print(f"UI: {dep.api_url()} (user admin, password in "
          f"{dep.home / 'simple_auth_manager_passwords.json.generated'})")
    if args.stop:
        services.stop(dep)
    else:
        print("services keep running; stop them with ./setup_airflow.sh stop")
    if state != "success":
        print(f"task logs: {dep.log_dir}/dag_id={DAG_ID}/", file=sys.stderr)
    return 0 if state == "success" and not problems else 1


if __name__ == "__main__":
    entry.exit_with(main)
