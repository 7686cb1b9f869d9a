"""One live deployment: a temp area, the real Airflow services on free ports, and the probes
the tests use (trigger by CLI and REST, wait, task instances from the metadata DB, task logs,
stage processes). Everything it starts it also stops, by pid file and process group or by an
environment marker that only its own processes carry; nothing is ever found by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from live_postgres import Cluster

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv: airflow, peftflow
TERMINAL = ("success", "failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(root: Path, api_port: int, log_port: int, scripts: Path | None) -> dict[str, str]:
    """The environment of the services (and of every CLI call we make against them)."""
    home = root / "airflow_home"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW__", "PEFTFLOW_", "AIRFLOW_HOME"))}
    env.update({
        "AIRFLOW_HOME": str(home), "PEFTFLOW_AIRFLOW_HOME": str(home),
        "PEFTFLOW_API_HOST": "127.0.0.1", "PEFTFLOW_API_PORT": str(api_port),
        "PEFTFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
        "PEFTFLOW_RELEASES_ROOT": str(root / "releases"),
        "PEFTFLOW_AUDIT_LOG": str(root / "audit" / "audit.jsonl"),
        "PEFTFLOW_DEVICE_LOCK_DIR": str(root / "device-locks"),
        "PEFTFLOW_ALLOWED_ROOTS": str(root),
        "PEFTFLOW_PYTHON": sys.executable,
        "PEFTFLOW_PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "project" / "dags"),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([{
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(root / "project" / "dags"), "refresh_interval": 0}}]),
        # The scheduler pre-starts a log server per deployment: never the default 8793.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
        "DO_NOT_TRACK": "1",
    })
    if scripts is not None:
        env["PEFTFLOW_SCRIPTS_DIR"] = str(scripts)
    return env


def procs_with(markers: dict[str, str], require_all: bool = True) -> list[int]:
    """Pids whose start-up environment carries the markers (KEY=VALUE), never ours."""
    wanted = {f"{k}={v}".encode() for k, v in markers.items()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        hits = wanted & env
        if hits and (not require_all or hits == wanted):
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (by parent pid), whatever its group or session."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def kill_groups(pids: list[int]) -> list[int]:
    """SIGKILL the process group of each pid (never our own group); the groups killed."""
    ours = os.getpgid(0)
    killed = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pgid = os.getpgid(pid)
            if pgid != ours and pgid not in killed:
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return killed


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC) if value else None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class Live:
    kind: str  # sqlite | postgresql
    root: Path
    env: dict[str, str]
    cluster: Cluster | None = None
    dag_ids: list[str] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    _client: Any = None

    # -- layout -------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.root / "airflow_home"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit" / "audit.jsonl"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def deployment(self) -> Any:
        from peftflow.airflow import services

        return services.deployment()  # reads the env the fixture put in place

    # -- commands -----------------------------------------------------------------------
    def cmd(self, argv: list[str], timeout: float = 180, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, env=env or self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:4])} exited {done.returncode}\n"
                                 f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}")
        return done

    def airflow(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cmd([str(BIN / "airflow"), *args], **kw)

    def peftflow(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cmd([str(BIN / "peftflow"), *args], **kw)

    @property
    def client(self) -> Any:
        if self._client is None:
            from peftflow.airflow.client import Client

            self._client = Client(f"http://127.0.0.1:{self.env['PEFTFLOW_API_PORT']}")
        return self._client

    def api(self, call: Callable[[], Any], attempts: int = 5) -> Any:
        """A REST call that survives a busy api-server on a loaded 2-core machine."""
        from peftflow.errors import ResourceError

        for attempt in range(attempts):
            try:
                return call()
            except ResourceError:
                if attempt == attempts - 1:
                    raise
                time.sleep(2)
        return None

    # -- triggering and waiting ---------------------------------------------------------
    def trigger_cli(self, dag_id: str, conf: dict[str, Any] | None) -> str:
        """`airflow dags trigger`, with `--conf` only when conf is not None."""
        extra = [] if conf is None else ["--conf", json.dumps(conf)]
        done = self.airflow("dags", "trigger", dag_id, *extra, "-o", "json")
        return str(parse_cli_json(done.stdout)[0]["dag_run_id"])

    def trigger_rest(self, dag_id: str, conf: dict[str, Any], retry_5xx: int = 0) -> str:
        """POST a run; with retry_5xx, an HTTP 5xx (SQLite busy under load) is retried and
        recorded in server_errors with the api-server's own error lines."""
        from peftflow.airflow.client import ApiError

        for attempt in range(retry_5xx + 1):
            try:
                return str(self.api(lambda: self.client.trigger(dag_id, conf)))
            except ApiError as exc:
                if exc.status < 500 or attempt == retry_5xx:
                    raise
                cause = self.log_errors("api-server")
                self.server_errors.append(f"{exc.status}: {cause.splitlines()[-1:]}")
                print(f"[live] trigger {dag_id} answered {exc.status}; api-server log:\n{cause}")
                time.sleep(2)
        raise AssertionError("unreachable")

    def log_errors(self, service: str, last: int = 12) -> str:
        lines = (self.logs / f"{service}.log").read_text(errors="replace").splitlines()
        marks = ("Error", "locked", "Traceback")
        return "\n".join([line[:600] for line in lines if any(m in line for m in marks)][-last:])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api(lambda: self.client.run(dag_id, run_id))["state"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api(lambda: self.client.runs(dag_id)))

    def wait(self, dag_id: str, run_id: str, timeout: float = 420,
             until: Callable[[], bool] | None = None) -> str:
        """The run's state once terminal (or `until` holds), or its state at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL or (until is not None and until()):
                return state
            if time.monotonic() > deadline:
                return state
            time.sleep(1.5)

    def wait_for(self, dag_id: str, run_id: str, expect: str, timeout: float = 420) -> float:
        """Wait for a terminal state; assert it, with the full diagnosis when it differs."""
        t0 = time.monotonic()
        state = self.wait(dag_id, run_id, timeout)
        took = time.monotonic() - t0
        if state != expect:
            text = self.report(dag_id, run_id)
            print(text)
            raise AssertionError(f"{dag_id} {run_id}: state {state!r} after {took:.0f}s, "
                                 f"expected {expect!r}\n{text}")
        return took

    def wait_note(self, dag_id: str, run_id: str, timeout: float = 30) -> str:
        """The run's note, which its run_summary task sets before the run ends."""
        deadline = time.monotonic() + timeout
        while True:
            note = self.api(lambda: self.client.run(dag_id, run_id)).get("note") or ""
            if note or time.monotonic() > deadline:
                return str(note)
            time.sleep(1)

    def wait_path(self, pattern: str, timeout: float, under: Path | None = None) -> Path:
        deadline = time.monotonic() + timeout
        base = under or self.artifacts
        while time.monotonic() < deadline:
            hits = sorted(base.glob(pattern))
            if hits:
                return hits[0]
            time.sleep(0.2)
        raise AssertionError(f"no {pattern} under {base} after {timeout:.0f}s")

    # -- task instances -----------------------------------------------------------------
    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        tis = self.api(lambda: self.client.task_instances(dag_id, run_id))
        return {ti["task_id"]: ti for ti in tis}

    def db_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.cluster is None:
            import sqlite3

            con = sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True,
                                  timeout=30)
            try:
                return con.execute(sql, params).fetchall()
            finally:
                con.close()
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.cluster.port, user="airflow",
                               password=self.cluster.password, dbname="airflow")
        try:
            with con.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return list(cur.fetchall())
        finally:
            con.close()

    def attempts(self, dag_id: str, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Every task attempt from the metadata DB (current tries and task_instance_history)."""
        cols = "task_id, run_id, try_number, state, start_date, end_date, pool"
        rows = self.db_rows(
            f"SELECT {cols} FROM task_instance WHERE dag_id = ? UNION ALL "
            f"SELECT {cols} FROM task_instance_history WHERE dag_id = ?", (dag_id, dag_id))
        out = []
        for task_id, run_id, try_number, state, start, end, pool in rows:
            if run_ids is None or run_id in run_ids:
                out.append({"task_id": task_id, "run_id": run_id, "try_number": try_number,
                            "state": state, "start": _when(start), "end": _when(end),
                            "pool": pool})
        return out

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = (self.logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / f"attempt={try_number}.log")
        if not path.exists():
            return f"(no log file {path})"
        lines = []
        for raw in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(raw)
                lines.append(f"{rec.get('timestamp', '')[11:23]} {rec.get('level', ''):7} "
                             f"{rec.get('event', '')}" + (f" {rec['error_detail']}"
                                                         if rec.get("error_detail") else ""))
            except (ValueError, AttributeError):
                lines.append(raw)
        return "\n".join(lines)

    def report(self, dag_id: str, run_id: str) -> str:
        """What a CI reader needs when a run went wrong: states, tries, failed tries' logs."""
        out = [f"=== diagnosis of {dag_id} / {run_id} ({self.kind}) ==="]
        try:
            out.append(f"run state: {self.run_state(dag_id, run_id)}")
            tis = self.task_instances(dag_id, run_id)
        except Exception as exc:  # the diagnosis must never hide the failure it explains
            out.append(f"(REST unavailable: {exc})")
            tis = {}
        for task_id, ti in tis.items():
            out.append(f"  {task_id:<18} {ti.get('state')!s:<16} try {ti.get('try_number')} "
                       f"{ti.get('start_date')} -> {ti.get('end_date')}")
        for task_id, ti in tis.items():
            tries = int(ti.get("try_number") or 0)
            if ti.get("state") not in ("success", None, "upstream_failed") or tries > 1:
                for n in range(1, tries + 1):
                    log = self.task_log(dag_id, run_id, task_id, n).splitlines()
                    out.append(f"--- {task_id} attempt {n} (last 60 lines) ---")
                    out.extend(log[-60:])
        for name in ("scheduler", "dag-processor"):
            path = self.logs / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-25:]
                out.append(f"--- {name}.log (last 25 lines) ---")
                out.extend(tail)
        return "\n".join(out)

    # -- artifacts, releases, audit -----------------------------------------------------
    def run_dir(self, dag_id: str, run_id: str) -> Path:
        from peftflow.run.runinfo import safe_segment

        return self.artifacts / dag_id / safe_segment(run_id)

    def stage_status(self, dag_id: str, run_id: str, stage: str) -> dict[str, Any]:
        return dict(json.loads((self.run_dir(dag_id, run_id) / stage / "status.json")
                               .read_text()))

    def releases_of(self, run_id: str) -> list[Path]:
        """Release manifests (anywhere under the releases root) that name this run."""
        hits = []
        for path in self.releases.rglob("release_manifest.json"):
            with contextlib.suppress(ValueError, OSError):
                if json.loads(path.read_text()).get("airflow", {}).get("run_id") == run_id:
                    hits.append(path)
        return hits

    def release_for(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The release this run's release_adapter handed on, checked to hold this run's
        adapter: a new release, or the existing one when the same adapter was released."""
        doc = self.stage_status(dag_id, run_id, "release_adapter")
        assert doc["status"] == "success", doc
        path = Path({o["name"]: o["path"] for o in doc["outputs"]}["release_manifest"])
        manifest = dict(json.loads(path.read_text()))
        trained = self.stage_status(dag_id, run_id, "train_adapter")
        adapter = {o["name"]: o["sha256"] for o in trained["outputs"]}["adapter"]
        assert manifest["adapter"]["sha256"] == adapter, (manifest["adapter"], adapter)
        manifest["_path"] = str(path)
        return manifest

    def audit_events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        from peftflow.store import audit

        return list(audit.events(self.audit_log, run_id=run_id))

    def stage_pids(self, run_id: str) -> list[int]:
        return procs_with({"PEFTFLOW_RUN_ID": run_id,
                           "PEFTFLOW_ARTIFACT_ROOT": str(self.artifacts)})

    def env_vars_holding(self, pid: int, secret: str) -> list[str]:
        """Names of the environment variables of `pid` whose value contains `secret`."""
        try:
            pairs = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            return []
        return [p.split(b"=", 1)[0].decode() for p in pairs if secret.encode() in p]

    def service_pid(self, name: str) -> int:
        return int((self.home / "run" / f"{name}.pid").read_text().strip())

    # -- teardown -----------------------------------------------------------------------
    def kill_leftovers(self) -> list[int]:
        """Process groups still carrying this deployment's markers (stages, orphaned tasks)."""
        pids = procs_with({"PEFTFLOW_ARTIFACT_ROOT": str(self.artifacts),
                           "AIRFLOW_HOME": str(self.home)}, require_all=False)
        return kill_groups(pids)

    def unmount_all(self) -> None:
        for mount in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        self.mounts.clear()


def parse_cli_json(stdout: str) -> Any:
    """`airflow ... -o json` prints log lines before the JSON document."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("[", "{")):
            with contextlib.suppress(ValueError):
                return json.loads("\n".join(lines[i:]))
    raise AssertionError(f"no JSON in the CLI output:\n{stdout}")


def copy_project_files(root: Path) -> None:
    """The project's DAG files (unchanged) beside a dag_specs/ folder the scenarios fill."""
    dags = root / "project" / "dags"
    dags.mkdir(parents=True)
    (root / "project" / "dag_specs").mkdir()
    for path in (ROOT / "dags").glob("*.py"):
        shutil.copy(path, dags)
