"""Secrets under the real services (SQLite): while a run is going and after it, nothing the
deployment started listens beyond loopback; the admin password file, airflow.cfg and every log
are 0600; the admin password is in no log; a running task's log is read back through the
api-server from the loopback log server (same secret_key), not refused."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from live_harness import Live
from live_scenarios import LOAD

pytestmark = [pytest.mark.live,
              pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)]
SERVED_LOG_TROUBLE = ("Could not read served logs", "same 'secret_key'")


def _deployment_processes(live: Live) -> list[psutil.Process]:
    """The services' process groups (pid files under AIRFLOW_HOME/run), and all their
    descendants (task supervisors, stages in sessions of their own)."""
    groups = {int(p.read_text().strip()) for p in (live.home / "run").glob("*.pid")}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
        except ProcessLookupError:
            continue
    for proc in list(found.values()):
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def _listening(live: Live) -> dict[str, list[str]]:
    """'address:port' -> the command lines listening there, over the deployment's processes."""
    out: dict[str, list[str]] = {}
    for proc in _deployment_processes(live):
        try:
            conns = proc.net_connections(kind="tcp")
            cmd = " ".join(proc.cmdline())[:120]
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                out.setdefault(f"{conn.laddr.ip}:{conn.laddr.port}", []).append(cmd)
    return out


def _not_loopback(listening: dict[str, list[str]]) -> dict[str, list[str]]:
    return {addr: cmds for addr, cmds in listening.items()
            if not ipaddress.ip_address(addr.rsplit(":", 1)[0].split("%")[0]).is_loopback}


def _open_to_others(paths: list[Path]) -> list[str]:
    return [f"{p} ({stat.S_IMODE(p.stat().st_mode):o})" for p in paths
            if p.is_file() and p.stat().st_mode & 0o077]


def _running_task_log(live: Live, run_id: str, timeout: float) -> str | None:
    """The api-server's answer for the log of the first task seen running (JSON text)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task_id, ti in live.task_instances(LOAD, run_id).items():
            if ti["state"] == "running":
                path = (f"/api/v2/dags/{LOAD}/dagRuns/{run_id}/taskInstances/{task_id}"
                        f"/logs/{ti['try_number']}")
                return json.dumps(live.api(lambda p=path: live.client._send("GET", p)))
        if live.run_state(LOAD, run_id) in ("success", "failed"):
            return None
        time.sleep(0.5)
    return None


def test_nothing_listens_beyond_loopback_and_secrets_and_logs_are_private(
        deployment: Live, measure: Callable[..., None]) -> None:
    live = deployment
    # LOAD (tiny profile, forced): a smoke run here would leave cached results that the
    # smoke tests, which run after this file, expect to compute themselves
    run_id = live.trigger_cli(LOAD, {"note": "live secrets test", "force_rerun": True})
    served = _running_task_log(live, run_id, timeout=300)
    during = _listening(live)
    live.wait_for(LOAD, run_id, "success", timeout=600)
    after = _listening(live)

    api = f"127.0.0.1:{live.env['PEFTFLOW_API_PORT']}"
    log_port = live.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]
    measure("listening sockets", live.kind, during=sorted(during), after=sorted(after),
            running_log_read=served is not None)
    for listening in (during, after):
        assert _not_loopback(listening) == {}, f"listening beyond loopback: {listening}"
        assert api in listening, listening  # the check saw the services at all
        assert any(addr.endswith(f":{log_port}") for addr in listening), listening
    if served is not None:  # the api-server reads a running task's log from the log server
        assert not any(t in served for t in SERVED_LOG_TROUBLE), served[:3000]

    secrets_files = [live.home / "simple_auth_manager_passwords.json.generated",
                     live.home / "airflow.cfg"]
    assert all(p.is_file() for p in secrets_files)
    logs = sorted(live.logs.rglob("*.log"))
    service_logs = [live.logs / f"{name}.log" for name in ("scheduler", "dag-processor",
                                                            "api-server")]
    assert set(service_logs) <= set(logs) and any("attempt=" in p.name for p in logs)
    assert stat.S_IMODE(live.logs.stat().st_mode) == 0o700
    assert _open_to_others(secrets_files + logs) == []
    db = live.home / "airflow.db"
    assert _open_to_others([db]) == []

    password = json.loads(secrets_files[0].read_text())["admin"]
    holding = [p for p in logs if password in p.read_text(errors="replace")]
    assert holding == [], f"the admin password is in {holding}"
    assert "Password for user" not in (live.logs / "api-server.log").read_text()
