"""The Airflow deployment of this project: generated airflow.cfg, and the three services.

`peftflow services configure|start|stop|status` (also `./setup_airflow.sh start|stop|status`).
Each service runs in its own process group with a pid file and a log under AIRFLOW_HOME;
stop signals the whole group (Airflow's children included), never processes by name.
Services start with umask 077 (their logs, task logs, the SQLite DB are private), and nothing
listens beyond loopback: the api-server on PEFTFLOW_API_HOST, the task log server (which
Airflow's scheduler would bind on every interface) on a loopback address, see serve_task_logs.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.airflow import edge
from peftflow.airflow.config import MARKER, PRIVATE, existing, render, seed_passwords, write_private
from peftflow.child import TERM_GRACE_S, stop_group

SERVICES = ("scheduler", "dag-processor", "api-server")
SERVICE_UMASK = 0o077
# The scheduler serves task logs itself on 0.0.0.0/[::] (Airflow 3.3 has no host setting):
# run it without, and Airflow's log server app beside it, on loopback, in its process group.
_SCHEDULER = ('"$0" -c "from peftflow.airflow import services; services.serve_task_logs()" & '
              'exec "$1" scheduler --skip-serve-logs')


@dataclass(frozen=True)
class Deployment:
    home: Path
    db_url: str
    api_host: str
    api_port: int
    parallelism: int

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"


def deployment(db_url: str | None = None) -> Deployment:
    s = settings.get()
    home = s.airflow_home
    return Deployment(
        home=home,
        db_url=db_url or s.db_url or existing(home, "sql_alchemy_conn")
        or f"sqlite:///{home / 'airflow.db'}",
        api_host=s.api_host,
        api_port=s.api_port,
        parallelism=s.parallelism,
    )


def managed(dep: Deployment) -> bool:
    """Whether airflow.cfg is ours to write (absent, or still carrying the marker)."""
    cfg = dep.home / "airflow.cfg"
    return not cfg.is_file() or MARKER in cfg.read_text(encoding="utf-8").split("\n", 1)[0]


def configure(db_url: str | None = None, executor: str | None = None) -> Deployment:
    """airflow.cfg for LocalExecutor, or with executor="edge" the edge profile (kept on
    later runs without the flag: the executor in airflow.cfg is the deployment's choice)."""
    dep = deployment(db_url)
    mode = executor or ("edge" if edge.enabled() else "local")
    if mode == "edge":
        edge.require_postgres(dep.db_url)
    for folder in (dep.home, dep.run_dir, dep.log_dir):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for folder in (dep.run_dir, dep.log_dir):
        folder.chmod(0o700)
    _make_private(dep)  # older logs: the api-server's held the generated password
    cfg = dep.home / "airflow.cfg"
    if not managed(dep):
        print(f"[setup] {cfg} is managed by hand (no peftflow marker); leaving it alone")
        return dep
    keys = {key: existing(dep.home, key) or secrets.token_urlsafe(32)
            for key in ("jwt_secret", "secret_key")}
    # it holds the JWT secret and possibly a DB password
    hybrid = {"executor": edge.HYBRID_EXECUTORS, "extra": edge.cfg_sections(dep.api_url())}
    write_private(cfg, render(db_url=dep.db_url, log_dir=dep.log_dir, api_host=dep.api_host,
                              api_port=dep.api_port, parallelism=dep.parallelism, **keys,
                              **(hybrid if mode == "edge" else {})))
    seed_passwords(dep.home)
    shown = dep.db_url.split("@")[-1] if "@" in dep.db_url else dep.db_url
    print(f"[setup] AIRFLOW_HOME={dep.home} (db: {shown}, parallelism {dep.parallelism}, "
          f"executor: {mode})")
    if mode == "edge":
        deployment_id = edge.write_tokens(keys["jwt_secret"])
        write_private(dep.home / edge.SECRET_FILE, keys["jwt_secret"] + "\n")
        print(f"[setup] edge profile: GPU stages go to Edge workers (Edge API "
              f"{edge.api_url(dep.api_url())}); deployment {deployment_id} tokens written to "
              "the artifact root, releases root and audit folder; a worker host needs "
              f"{dep.home / edge.SECRET_FILE} (copy it, mode 0600)")
    return dep


def _pid(dep: Deployment, name: str) -> int | None:
    try:
        pid = int((dep.run_dir / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def service_env(dep: Deployment) -> dict[str, str]:
    env = settings.base_env({"AIRFLOW_HOME": str(dep.home), "DO_NOT_TRACK": "1",
                             "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False"})
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def open_log(path: Path) -> int:
    """A service log opened for appending, mode 0600 (an existing one is made 0600 too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE)
    os.fchmod(fd, PRIVATE)
    return fd


def _make_private(dep: Deployment) -> None:
    """What was written before the services ran (setup's logs, the SQLite DB): 0600."""
    for path in [*dep.log_dir.glob("*.log"), *dep.home.glob("airflow.db*")]:
        with contextlib.suppress(OSError):
            path.chmod(PRIVATE)


def _argv(name: str) -> list[str]:
    airflow = str(Path(sys.executable).parent / "airflow")
    if name == "scheduler":
        return ["sh", "-c", _SCHEDULER, sys.executable, airflow]
    return [airflow, name]


def start(dep: Deployment, names: tuple[str, ...] = SERVICES, wait_s: float = 120.0) -> None:
    for folder in (dep.run_dir, dep.log_dir):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _make_private(dep)
    if "api-server" in names and managed(dep):
        seed_passwords(dep.home)  # else Airflow generates one and prints it to the log
    for name in names:
        if _pid(dep, name):
            print(f"{name}: already running (pid {_pid(dep, name)})")
            continue
        log = open_log(dep.log_dir / f"{name}.log")
        try:
            proc = subprocess.Popen(_argv(name), env=service_env(dep), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=dep.home,
                                    umask=SERVICE_UMASK)
        finally:
            os.close(log)
        (dep.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        print(f"{name}: started (pid {proc.pid}, log {dep.log_dir / (name + '.log')})")
    if "api-server" in names:
        wait_healthy(dep, wait_s)


def log_server_host(hostname: str) -> str:
    """Where the task log server listens: a loopback address that `hostname` (what task
    instances record, and the api-server fetches logs from) resolves to, else 127.0.0.1."""
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(hostname, None,
                                                                type=socket.SOCK_STREAM)}
    except OSError:
        return "127.0.0.1"
    loopback = sorted(a for a in found if ipaddress.ip_address(a.split("%")[0]).is_loopback)
    return "127.0.0.1" if "127.0.0.1" in loopback or not loopback else loopback[0]


def serve_task_logs() -> None:
    """Airflow's task log server app, on loopback; run by the scheduler service (its child)."""
    import ctypes

    import uvicorn
    from airflow.configuration import conf
    from airflow.utils.net import get_hostname

    with contextlib.suppress(OSError, AttributeError):  # exit with the scheduler (Linux)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != os.getpgid(0):  # the scheduler (our group's leader) is gone already
        return
    host = log_server_host(get_hostname())  # type: ignore[no-untyped-call]
    port = conf.getint("logging", "worker_log_server_port")
    print(f"task log server: listening on {host}:{port}", flush=True)
    uvicorn.run("airflow.utils.serve_logs.log_server:get_app", factory=True, host=host,
                port=port, access_log=False)


def wait_healthy(dep: Deployment, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    url = f"{dep.api_url()}/api/v2/monitor/health"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                print(f"api-server: healthy at {dep.api_url()}")
                return
        if not _pid(dep, "api-server"):
            raise SystemExit(f"api-server exited; see {dep.log_dir / 'api-server.log'}")
        time.sleep(1)
    raise SystemExit(f"api-server not healthy after {wait_s:.0f}s; see "
                     f"{dep.log_dir / 'api-server.log'}")


def stop(dep: Deployment, names: tuple[str, ...] = SERVICES,
         grace_s: float = TERM_GRACE_S) -> None:
    """Stop each service's process group: SIGTERM, SIGKILL after the grace (peftflow/child.py).

    Stages run in sessions of their own, out of these groups' reach, and finish stopping either
    way; the scheduler's group holds the task supervisors, which pass SIGTERM on to their tasks
    (on_kill stops the stage with TERM_GRACE_S), and they get as long to see them exit."""
    for name in reversed(names):
        pid = _pid(dep, name)
        pid_file = dep.run_dir / f"{name}.pid"
        if pid is not None:
            in_time = stop_group(pid, grace_s)
            print(f"{name}: stopped (pid {pid})" if in_time else
                  f"{name}: killed (pid {pid}; still running {grace_s:.0f}s after SIGTERM)")
        pid_file.unlink(missing_ok=True)


def status(dep: Deployment) -> int:
    down = 0
    for name in SERVICES:
        pid = _pid(dep, name)
        print(f"{name}: {'running (pid ' + str(pid) + ')' if pid else 'stopped'}")
        down += pid is None
    print(f"AIRFLOW_HOME={dep.home}  UI: {dep.api_url()}  admin password: "
          f"{dep.home / 'simple_auth_manager_passwords.json.generated'}")
    return 1 if down else 0


def pause_policy() -> int:
    """Apply the specs' `start_paused` (setup's last step) and say what each DAG will do."""
    settings.use_project_airflow_home()
    from peftflow.airflow import pausepolicy
    from peftflow.spec import validate

    specs = validate.validate_paths([settings.get().project_root / "dag_specs"]).specs
    for state in pausepolicy.apply(specs):
        print(f"[setup] {state.line}")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    if args.action == "configure":
        configure(args.db, args.executor)
        return 0
    if args.action == "pause-policy":
        return pause_policy()
    dep = deployment()
    if args.action == "start":
        start(dep)
        return 0
    if args.action == "stop":
        stop(dep)
        return 0
    if args.action == "restart":
        stop(dep)
        start(dep)
        return 0
    return status(dep)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("services", help="configure, start, stop the Airflow services")
    p.add_argument("action", choices=("configure", "start", "stop", "restart", "status",
                                       "pause-policy"),
                   help="pause-policy: apply each spec's start_paused (setup does this)")
    p.add_argument("--db", help="metadata DB URL for configure (default: SQLite file)")
    p.add_argument("--executor", choices=edge.EXECUTORS,
                   help="configure: local (LocalExecutor, the default) or edge (GPU stages on "
                   "Airflow Edge workers; needs PostgreSQL); kept from airflow.cfg if omitted")
    p.set_defaults(func=_cmd)
