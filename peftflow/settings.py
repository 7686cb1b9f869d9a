"""The one place that reads the environment.

Every path the project writes to or trusts comes from here, so the artifact layout and the
allowed roots are configured in one place. Read settings with `get()`; it is cheap and
uncached on purpose, so tests and subprocesses that change the environment see the change.
"""

from __future__ import annotations

import enum
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from peftflow.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    project_root: Path
    artifact_root: Path  # <artifact_root>/<dag_id>/<run_id>/<stage>/
    releases_root: Path  # <releases_root>/<profile>/<version>/
    audit_log: Path
    audit_key: Path  # PEFTFLOW_AUDIT_KEY; outside the audit folder, keyring and anchors beside it
    models_root: Path  # where relative base-model paths of profiles resolve
    allowed_roots: tuple[Path, ...]  # spec/profile paths must stay inside one of these
    orchestration_config: Path
    devices_config: Path  # PEFTFLOW_DEVICES_CONFIG: the GPU inventory of this host
    device_lock_dir: Path  # PEFTFLOW_DEVICE_LOCK_DIR: one lock file per device, host-wide
    schemas_dir: Path
    airflow_home: Path
    db_url: str | None  # PEFTFLOW_DB_URL; None = the SQLite file in airflow_home
    api_host: str  # the api-server listens here; loopback unless told otherwise
    api_port: int
    parallelism: int  # LocalExecutor worker processes
    scripts_dir: Path  # the stage entry points scripts/<stage>.sh
    tokenizer: str  # PEFTFLOW_TOKENIZER: auto | native | rust (see dataset/tokenizer.py)


def _path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


_ENV_KEYS = ("PEFTFLOW_", "AIRFLOW_HOME")


def get() -> Settings:
    """Current settings; recomputed only when a PEFTFLOW_* variable or AIRFLOW_HOME changes."""
    snapshot = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_KEYS)))
    return _compute(snapshot)


@functools.lru_cache(maxsize=8)
def _compute(snapshot: tuple[tuple[str, str], ...]) -> Settings:
    root = _path("PEFTFLOW_PROJECT_ROOT", PROJECT_ROOT)
    artifact_root = _path("PEFTFLOW_ARTIFACT_ROOT", root / "artifacts")
    extra = tuple(
        Path(p).expanduser().resolve()
        for p in os.environ.get("PEFTFLOW_ALLOWED_ROOTS", "").split(os.pathsep)
        if p.strip()
    )
    models_root = _path("PEFTFLOW_MODELS_ROOT", root / "models")
    airflow_home = _path("AIRFLOW_HOME", _path("PEFTFLOW_AIRFLOW_HOME", root / "airflow_home"))
    return Settings(
        project_root=root,
        artifact_root=artifact_root,
        releases_root=_path("PEFTFLOW_RELEASES_ROOT", root / "releases"),
        audit_log=_path("PEFTFLOW_AUDIT_LOG", root / "audit" / "audit.jsonl"),
        audit_key=_path("PEFTFLOW_AUDIT_KEY", airflow_home / "peftflow-audit.key"),
        models_root=models_root,
        allowed_roots=(root, models_root, *extra),
        orchestration_config=_path(
            "PEFTFLOW_ORCHESTRATION_CONFIG", root / "configs" / "orchestration.yaml"
        ),
        devices_config=_path("PEFTFLOW_DEVICES_CONFIG", root / "configs" / "devices.yaml"),
        # Host-wide on purpose (not per AIRFLOW_HOME): a GPU is shared by every deployment and
        # every hand-run script of this user on the box, so they must all see the same locks.
        device_lock_dir=_path("PEFTFLOW_DEVICE_LOCK_DIR",
                              Path.home() / ".local" / "state" / "peftflow" / "devices"),
        schemas_dir=root / "schemas",
        airflow_home=airflow_home,
        db_url=os.environ.get("PEFTFLOW_DB_URL") or None,
        scripts_dir=_path("PEFTFLOW_SCRIPTS_DIR", root / "scripts"),
        api_host=os.environ.get("PEFTFLOW_API_HOST", "127.0.0.1"),
        api_port=int(os.environ.get("PEFTFLOW_API_PORT", "8080")),
        parallelism=int(os.environ.get("PEFTFLOW_PARALLELISM",
                                       str(min(4, max(2, os.cpu_count() or 2))))),
        tokenizer=os.environ.get("PEFTFLOW_TOKENIZER", "auto").strip().lower() or "auto",
    )


class Tracker(enum.StrEnum):
    """Where runs are tracked: nowhere, or an MLflow tracking store."""

    OFF = "off"
    MLFLOW = "mlflow"


@dataclass(frozen=True)
class Tracking:
    """Experiment tracking (peftflow.track); read with `tracking()`, not part of `get()`."""

    tracker: Tracker  # PEFTFLOW_TRACKING; default mlflow when a tracking URI is set, else off
    uri: str  # PEFTFLOW_MLFLOW_TRACKING_URI; may carry a password: show it only redacted
    experiment: str | None  # PEFTFLOW_MLFLOW_EXPERIMENT; None = the DAG id
    artifact_root: Path | None  # PEFTFLOW_MLFLOW_ARTIFACT_ROOT; None = the store decides
    log_adapter: bool  # PEFTFLOW_MLFLOW_LOG_ADAPTER: copy the adapter into MLflow (default: link)

    @property
    def file_store(self) -> bool:
        """MLflow's file store (file:... or a bare path), in maintenance mode since MLflow 3.7."""
        return self.uri.startswith("file:") or "://" not in self.uri


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name}={raw!r} is not a yes/no value; use one of "
                          f"{', '.join(_TRUE)} or {', '.join(v for v in _FALSE if v)}")
    return value in _TRUE


def _sqlite_folder(uri: str) -> Path | None:
    """The folder of an SQLite store's database file (sqlite:///<path>), if it is a file."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).expanduser().resolve().parent if path and path != ":memory:" else None


def tracking() -> Tracking:
    """The tracking settings; a bad value raises ConfigError naming the variable.

    Apart from `get()` on purpose: only peftflow.track reads these, and it turns the error
    into a failed, audited tracking result, so a typo here never stops a DAG from loading or
    a stage from running.
    """
    root = get().project_root
    uri = (os.environ.get("PEFTFLOW_MLFLOW_TRACKING_URI") or "").strip()
    raw = os.environ.get("PEFTFLOW_TRACKING")
    name = (raw or ("mlflow" if uri else "off")).strip().lower()
    if name not in tuple(Tracker):
        raise ConfigError(f"PEFTFLOW_TRACKING={raw!r} is not one of "
                          f"{', '.join(Tracker)}; use mlflow to log runs to MLflow, or off")
    default_store = root / "mlflow"
    folder = default_store if not uri else _sqlite_folder(uri)  # artifacts beside an SQLite DB
    explicit = os.environ.get("PEFTFLOW_MLFLOW_ARTIFACT_ROOT")
    artifact_root = (Path(explicit).expanduser().resolve() if explicit
                     else None if folder is None else folder / "artifacts")
    return Tracking(
        tracker=Tracker(name),
        uri=uri or f"sqlite:///{default_store / 'mlflow.db'}",
        experiment=(os.environ.get("PEFTFLOW_MLFLOW_EXPERIMENT") or "").strip() or None,
        artifact_root=artifact_root,
        log_adapter=_flag("PEFTFLOW_MLFLOW_LOG_ADAPTER", False),
    )


# MLflow's own client settings, applied unless the user set them. Its defaults (120 s timeout,
# 7 retries with backoff: about 4 minutes per request) would hold the run_summary task for many
# minutes when the tracker is down; these fail a dead tracker in about 3 s. DO_NOT_TRACK=1,
# which our services set, does not switch MLflow's telemetry off ("true" does); this does.
_MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_DISABLE_TELEMETRY": "true"}


def set_mlflow_defaults(*, file_store: bool) -> None:
    """Set MLflow's client variables (call before importing mlflow); a file store is allowed
    only when it is the configured store (MLflow refuses it unless MLFLOW_ALLOW_FILE_STORE)."""
    for key, value in _MLFLOW_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if file_store:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def env_str(name: str, default: str | None = None) -> str | None:
    """One environment variable, for modules that must not read os.environ themselves."""
    return os.environ.get(name, default)


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, for services we start."""
    return {**os.environ, **extra}


# Connection URIs, variables, the metadata DB URL and API credentials: never for a stage.
_SECRET_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
_SECRET_NAMES = frozenset({"PEFTFLOW_DB_URL", "PEFTFLOW_API_PASSWORD", "PEFTFLOW_API_USER",
                           # a tracking URI can carry a password; stages never track
                           "PEFTFLOW_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI",
                           "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"})


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Environment of a stage process: ours plus `extra`, without Airflow's own settings.

    AIRFLOW__* variables can carry the metadata DB URL with its password, AIRFLOW_CONN_* and
    AIRFLOW_VAR_* connections and variables; stages never need them or our DB URL and API
    credentials, so none is passed on (and none can reach a stage log).
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SECRET_PREFIXES) and k not in _SECRET_NAMES}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def api_credentials() -> tuple[str | None, str | None]:
    """Airflow API user and password from the environment (never logged)."""
    return os.environ.get("PEFTFLOW_API_USER"), os.environ.get("PEFTFLOW_API_PASSWORD")


def host_name() -> str:
    """This host's name in leases, status files and the audit trail. An Edge worker sets
    PEFTFLOW_HOST to its Edge hostname, so two workers on one box stay apart."""
    import socket

    return os.environ.get("PEFTFLOW_HOST") or socket.gethostname()


def current_user() -> str:
    """Who runs this command, for the audit trail."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def use_project_airflow_home() -> Path:
    """Point Airflow at the project's AIRFLOW_HOME unless one is set; call before importing
    airflow (it reads AIRFLOW_HOME once, at import)."""
    home = get().airflow_home
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    return home
