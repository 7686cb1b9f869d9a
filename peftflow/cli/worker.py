"""`peftflow worker start|stop|drain|resume|status`: this host as an Airflow Edge worker.

The worker is Airflow's own (`airflow edge worker`); this command only makes it safe to start:
the shared roots are the main host's (deployment tokens), the code and versions are the main
host's, the GPUs named exist in this host's inventory. It then runs the worker in its own
process group with concurrency = its GPUs, a stable hostname (the Edge worker's name and the
host of every device lease its stages take) and its own AIRFLOW_HOME under
<AIRFLOW_HOME>/edge-workers/<hostname>/, so two workers on one box stay apart.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from peftflow import settings
from peftflow.airflow import edge
from peftflow.airflow.config import existing, render, write_private
from peftflow.child import stop_group
from peftflow.errors import ConfigError
from peftflow.spec import inventory as inventory_mod
from peftflow.spec.model import DEFAULT_QUEUE

HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as runtime.queue in the schema
START_WAIT_S = 90.0


def worker_home(hostname: str) -> Path:
    return settings.get().airflow_home / "edge-workers" / hostname


def _pid_file(hostname: str) -> Path:
    return worker_home(hostname) / "worker.pid"


def _alive(hostname: str) -> int | None:
    try:
        pid = int(_pid_file(hostname).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _secret(path: str | None) -> str:
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--secret-file {path}: {exc.strerror}; copy the main host's "
                              "$AIRFLOW_HOME/edge-jwt-secret here (scp, mode 0600)") from None
    else:
        value = existing(settings.get().airflow_home, "jwt_secret") or ""
    if not value:
        raise ConfigError("no JWT secret: Edge workers sign their requests with the main "
                          "host's [api_auth] jwt_secret. Copy $AIRFLOW_HOME/edge-jwt-secret "
                          "from the main host and pass --secret-file FILE")
    return value


def _base_url(url: str) -> tuple[str, str, int]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"--api-url {url!r}: give the main host's api-server as "
                          "http(s)://HOST:PORT (what ./setup_airflow.sh start printed)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{parsed.hostname}:{port}", parsed.hostname, port


def _devices(gpus: str | None) -> list[inventory_mod.Device]:
    inventory = inventory_mod.load()
    if not gpus:
        return list(inventory.devices)
    wanted = [g.strip() for g in gpus.split(",") if g.strip()]
    unknown = [g for g in wanted if g not in inventory.ids]
    if unknown or not wanted:
        raise ConfigError(f"--gpus {gpus}: {', '.join(unknown) or 'none given'} not in this "
                          f"host's GPU inventory ({inventory.path}: "
                          f"{', '.join(inventory.ids)}); name devices it lists")
    return [d for d in inventory.devices if d.id in wanted]


def _write_home(home: Path, base_url: str, host: str, port: int, secret: str,
                devices: list[inventory_mod.Device]) -> None:
    for folder in (home, home / "logs"):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = render(db_url=f"sqlite:///{home / 'unused.db'}", log_dir=home / "logs",
                  api_host=host, api_port=port, parallelism=len(devices),
                  jwt_secret=secret, secret_key=secrets.token_urlsafe(32),
                  executor=edge.HYBRID_EXECUTORS, extra=edge.cfg_sections(base_url),
                  api_base=base_url)
    write_private(home / "airflow.cfg", text)
    listed = [{"id": d.id, **({"memory_gib": d.memory_gib} if d.memory_gib else {})}
              for d in devices]
    (home / "devices.yaml").write_text(
        "# this worker's GPUs (peftflow worker start --gpus); its stages lease these\n"
        + yaml.safe_dump({"devices": listed}, sort_keys=False), encoding="utf-8")


def start(args: argparse.Namespace) -> int:
    hostname = args.hostname or socket.gethostname()
    if not HOSTNAME_RE.match(hostname):
        raise ConfigError(f"--hostname {hostname!r}: use letters, digits, '.', '_', '-' "
                          "(at most 63)")
    if (pid := _alive(hostname)) is not None:
        print(f"[worker] {hostname} already runs (pid {pid}); `peftflow worker stop "
              f"--hostname {hostname}` first")
        return 0
    base_url, host, port = _base_url(args.api_url)
    secret = _secret(args.secret_file)
    deployment_id = edge.check_roots(secret)
    if mismatch := edge.version_mismatch(edge.main_versions()):
        raise ConfigError("this host's versions differ from the main host's, so its stages "
                          "would run other code:\n  - " + "\n  - ".join(mismatch)
                          + "\nFix: check out the main host's commit and run ./setup_airflow.sh"
                          " here (the main host reruns setup after an upgrade too)")
    devices = _devices(args.gpus)
    queues = args.queues or DEFAULT_QUEUE
    if bad := [q for q in queues.split(",") if not QUEUE_RE.match(q)]:
        raise ConfigError(f"--queues {queues!r}: {bad[0]!r} is not a queue name (letters, "
                          "digits, '.', '_', '-'; comma-separated, no spaces)")
    home = worker_home(hostname)
    _write_home(home, base_url, host, port, secret, devices)
    env = {**os.environ, "AIRFLOW_HOME": str(home), "PEFTFLOW_HOST": hostname,
           "PEFTFLOW_DEVICES_CONFIG": str(home / "devices.yaml"), "DO_NOT_TRACK": "1",
           "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False"}
    env.pop("AIRFLOW__CORE__EXECUTOR", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    argv = [str(Path(sys.executable).parent / "airflow"), "edge", "worker",
            "--concurrency", str(len(devices)), "--queues", queues,
            "--edge-hostname", hostname, "--pid", str(_pid_file(hostname))]
    log = home / "logs" / "worker.log"
    deadline = time.monotonic() + args.wait
    while (proc := _launch(argv, env, home, log, base_url, deadline)) is None:
        # A worker that died (host crash, kill -9) stays "active" in the DB until Edge
        # misses 5 heartbeats; a restart before that is refused, so wait it out.
        print(f"[worker] Edge still lists an active {hostname} (a previous run that died); "
              f"retrying until it is declared dead ({edge.HEARTBEAT_S * 5} s after its last "
              "heartbeat)")
        time.sleep(edge.HEARTBEAT_S)
    ids = ", ".join(d.id for d in devices)
    print(f"[worker] {hostname} joined deployment {deployment_id} at {base_url}: queues "
          f"{queues}, GPUs {ids} (concurrency {len(devices)}), pid {proc.pid}, log {log}")
    return 0


def _launch(argv: list[str], env: dict[str, str], home: Path, log: Path, base_url: str,
            deadline: float) -> subprocess.Popen[bytes] | None:
    """The registered worker, or None when Edge refused its name as still active and there
    is time left to retry; ConfigError with the log's tail for every other failure."""
    start_at = log.stat().st_size if log.exists() else 0
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, start_new_session=True, cwd=home)
    finally:
        os.close(fd)
    hostname = env["PEFTFLOW_HOST"]
    # Edge writes its pid file once the api-server accepted the registration
    while _alive(hostname) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                stop_group(proc.pid)
            with log.open("rb") as f:
                f.seek(start_at)
                text = f.read().decode(errors="replace")
            if "is already active" in text and time.monotonic() < deadline:
                return None
            tail = [line for line in text.splitlines() if line.strip()][-12:]
            raise ConfigError(f"the Edge worker {hostname} did not register with "
                              f"{base_url} (log {log}):\n" + "\n".join(tail)
                              + "\nFix what the log says (api-url, firewall, [edge] "
                              "api_enabled on the main host, a version mismatch), then start "
                              "again")
        time.sleep(0.5)
    return proc


def _edge(hostname: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIRFLOW_HOME": str(worker_home(hostname))}
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), "edge", *args,
                           "--pid", str(_pid_file(hostname))], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def _running(args: argparse.Namespace) -> tuple[str, int]:
    hostname = args.hostname or socket.gethostname()
    pid = _alive(hostname)
    if pid is None:
        raise ConfigError(f"no Edge worker {hostname} runs on this host (no live "
                          f"{_pid_file(hostname)}); `peftflow worker start` starts one")
    return hostname, pid


def stop(args: argparse.Namespace) -> int:
    """Drain, then exit: the worker takes no new job, lets its running stages finish (up to
    --wait seconds), reports itself offline. After --wait its process group is stopped."""
    hostname, pid = _running(args)
    os.kill(pid, signal.SIGINT)  # Edge: drain (SIGTERM would stop its jobs at once)
    deadline = time.monotonic() + args.wait
    while _alive(hostname) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    if _alive(hostname) is not None:
        stop_group(pid)
        print(f"[worker] {hostname} did not drain within {args.wait:.0f} s; stopped its "
              "process group (its running task fails and is retried elsewhere)")
        return 1
    print(f"[worker] {hostname} drained and stopped")
    return 0


def maintenance(args: argparse.Namespace, on: bool) -> int:
    hostname, _ = _running(args)
    extra = ["--comments", args.comment or "drained with peftflow worker drain"] if on else []
    done = _edge(hostname, "maintenance", "on" if on else "off", *extra, "--wait")
    if done.returncode != 0:
        raise ConfigError(f"airflow edge maintenance failed for {hostname}:\n"
                          f"{(done.stderr or done.stdout)[-2000:]}")
    print(f"[worker] {hostname} " + ("in maintenance: it finishes running stages and takes no "
                                     "new GPU task" if on else "takes GPU tasks again"))
    return 0


def status(args: argparse.Namespace) -> int:
    hostname, _ = _running(args)
    done = _edge(hostname, "status", timeout=30)
    print(done.stdout.strip() or done.stderr.strip())
    return done.returncode


def _cmd(args: argparse.Namespace) -> int:
    if args.action == "start":
        if not args.api_url:
            raise ConfigError("worker start needs --api-url http://MAIN-HOST:PORT")
        return start(args)
    if args.action == "stop":
        return stop(args)
    if args.action in ("drain", "resume"):
        return maintenance(args, on=args.action == "drain")
    return status(args)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("worker", help="run this host as an Airflow Edge worker of the "
                              "edge deployment profile (GPU stages)")
    p.add_argument("action", choices=("start", "stop", "drain", "resume", "status"),
                   help="drain: maintenance mode (no new task); stop: drain, then exit")
    p.add_argument("--api-url", help="start: the main host's api-server, http://HOST:PORT")
    p.add_argument("--gpus", help="start: device ids of this host's inventory to serve "
                   "(default: all); the worker's concurrency")
    p.add_argument("--hostname", help="the worker's stable name (default: this host's); "
                   "distinct names let two workers share a box")
    p.add_argument("--queues", help="start: queues to serve, comma-separated (default gpu); "
                   "a profile's runtime.queue routes its GPU stages")
    p.add_argument("--secret-file", help="start: file holding the main host's JWT secret "
                   "(default: this AIRFLOW_HOME's airflow.cfg)")
    p.add_argument("--comment", help="drain: why (shown in the UI's Edge worker list)")
    p.add_argument("--wait", type=float, default=START_WAIT_S,
                   help="seconds to wait for registration (start) or the drain (stop)")
    p.set_defaults(func=_cmd)
