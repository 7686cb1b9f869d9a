"""The `edge` deployment profile: GPU stages on Airflow Edge workers, CPU stages on the host.

Airflow's own scale-out (apache-airflow-providers-edge3): the scheduler runs two executors,
LocalExecutor (the default: prepare, gate, release, summary) and EdgeExecutor, to which the
GPU tasks are routed with a queue. Workers pull their jobs from the api-server's Edge API over
HTTP; there is no broker. Edge claims jobs with row locks (SELECT ... FOR UPDATE SKIP LOCKED),
which SQLite does not have, so the profile needs PostgreSQL.

Artifacts cross hosts through one shared artifact root, releases root and audit folder (an
NFS/SMB mount at the same path on every host). Setup writes a deployment token into each;
a worker checks them before it starts (`check_roots`), so a worker that sees a local folder,
another deployment's, or the mount at another path is refused instead of writing where the
main host never reads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from importlib import metadata
from pathlib import Path

from peftflow import __version__, settings
from peftflow.errors import ConfigError
from peftflow.store import atomic

EXECUTORS = ("local", "edge")
EDGE_EXECUTOR_PATH = "airflow.providers.edge3.executors.EdgeExecutor"
EDGE_EXECUTOR = "EdgeExecutor"  # what a task's `executor=` names (Airflow matches class names)
HYBRID_EXECUTORS = f"LocalExecutor,{EDGE_EXECUTOR_PATH}"
EDGE_API_PATH = "/edge_worker/v1/rpcapi"
TOKEN_NAME = ".peftflow-deployment.json"  # noqa: S105 (a file name)
SECRET_FILE = "edge-jwt-secret"  # noqa: S105 (a file name) in AIRFLOW_HOME, 0600: what a worker host copies
# How often a worker reports and polls; Edge declares a worker dead after 5 heartbeats.
HEARTBEAT_S = 10
POLL_S = 2
# Code whose copy on a worker must equal the main host's: a stage on host B runs B's code.
_CODE = ("peftflow/**/*.py", "operators/*.py", "dags/*.py", "plugins/*.py", "scripts/*.sh",
         "schemas/*.json")


def enabled() -> bool:
    """Whether this deployment runs the edge profile: its airflow.cfg (or the environment,
    which Airflow itself lets win) names the EdgeExecutor. Read without importing Airflow."""
    from peftflow.airflow.config import existing

    value = os.environ.get("AIRFLOW__CORE__EXECUTOR") or existing(
        settings.get().airflow_home, "executor") or ""
    return EDGE_EXECUTOR in value


def require_postgres(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        shown = db_url.split("@")[-1]
        raise ConfigError(
            f"the edge profile needs PostgreSQL, but the metadata DB is {shown}: Edge workers "
            "claim jobs with row locks (SELECT ... FOR UPDATE SKIP LOCKED), which SQLite does "
            "not have, so two workers could take the same task. Fix: ./setup_airflow.sh "
            "--executor edge --db postgresql+psycopg2://USER:PASSWORD@HOST/DB")


def api_url(base_url: str) -> str:
    """The Edge API under an api-server's base URL (http://host:port)."""
    return base_url.rstrip("/") + EDGE_API_PATH


def cfg_sections(base_url: str) -> str:
    """The airflow.cfg lines of the edge profile (main host and workers alike)."""
    return f"""
[edge]
api_enabled = True
api_url = {api_url(base_url)}
heartbeat_interval = {HEARTBEAT_S}
job_poll_interval = {POLL_S}
# a drained worker lets its running stage finish (training can take hours)
drain_timeout_sec = 0
"""


# -- versions -----------------------------------------------------------------------------
def code_digest(root: Path | None = None) -> str:
    """sha256 over the project's code (paths and bytes), the same on hosts with the same
    checkout."""
    root = root or settings.get().project_root
    digest = hashlib.sha256()
    for pattern in _CODE:
        for path in sorted(root.glob(pattern)):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """What must match between the main host and a worker."""
    found = {"peftflow": __version__, "code": code_digest()}
    for dist in ("apache-airflow-core", "apache-airflow-providers-edge3"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


# -- deployment tokens in the shared roots ------------------------------------------------
def shared_roots() -> dict[str, Path]:
    s = settings.get()
    return {"artifacts": s.artifact_root, "releases": s.releases_root,
            "audit": s.audit_log.parent}


def _proof(secret: str, deployment_id: str, role: str, path: Path) -> str:
    message = f"peftflow-root\0{deployment_id}\0{role}\0{path}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _read_token(folder: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((folder / TOKEN_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_tokens(secret: str) -> str:
    """Write (or keep) the deployment token in each shared root; the deployment id. The proof
    is an HMAC under the JWT secret every Edge worker must share anyway, so only a host of
    this deployment can tell a root is ours, and nothing secret is on the share."""
    roots = shared_roots()
    found = {str(doc.get("deployment")) for doc in map(_read_token, roots.values())
             if doc and doc.get("deployment")}
    deployment_id = sorted(found)[0] if len(found) == 1 else uuid.uuid4().hex
    ours = versions()  # reads every code file: once, not per root
    for role, folder in roots.items():
        folder.mkdir(parents=True, exist_ok=True)
        resolved = folder.resolve()
        doc = {"deployment": deployment_id, "role": role, "path": str(resolved),
               "proof": _proof(secret, deployment_id, role, resolved), "versions": ours}
        atomic.write_text(folder / TOKEN_NAME, json.dumps(doc, indent=1) + "\n")
    return deployment_id


def check_roots(secret: str) -> str:
    """The deployment id when every shared root this host sees is the main host's (same
    token, same path, proof valid under our secret); ConfigError naming each bad root and the
    fix otherwise."""
    problems: list[str] = []
    ids: set[str] = set()
    for role, folder in shared_roots().items():
        doc = _read_token(folder)
        resolved = folder.resolve() if folder.exists() else folder
        if doc is None:
            problems.append(f"{role} root {folder}: no {TOKEN_NAME}, so it is not the folder "
                            "the main host writes (a local folder, or the share is not "
                            "mounted)")
            continue
        dep_id, path = str(doc.get("deployment", "")), str(doc.get("path", ""))
        if not hmac.compare_digest(str(doc.get("proof", "")),
                                   _proof(secret, dep_id, role, Path(path))):
            problems.append(f"{role} root {folder}: its token belongs to another deployment "
                            "(it does not verify with this host's JWT secret)")
        elif path != str(resolved):
            problems.append(f"{role} root {folder}: the main host writes it at {path}; mount "
                            "the share at that same path (artifact paths are absolute)")
        ids.add(dep_id)
    if len(ids) > 1 and not problems:
        problems.append(f"the shared roots belong to different deployments ({sorted(ids)})")
    if problems:
        raise ConfigError("this worker would not write where the main host reads:\n  - "
                          + "\n  - ".join(problems) + "\nFix: mount the main host's "
                          "artifact root, releases root and audit folder at the same paths "
                          "(PEFTFLOW_ARTIFACT_ROOT, PEFTFLOW_RELEASES_ROOT, PEFTFLOW_AUDIT_LOG"
                          " as on the main host), with the main host's JWT secret, then start "
                          "the worker again")
    return ids.pop()


def version_mismatch(main: dict[str, str]) -> list[str]:
    """What differs between the main host's versions (from its token) and ours."""
    ours = versions()
    return [f"{key}: main host {main.get(key)!r}, this host {ours.get(key)!r}"
            for key in sorted(set(main) | set(ours)) if main.get(key) != ours.get(key)]


def main_versions() -> dict[str, str]:
    doc = _read_token(shared_roots()["artifacts"]) or {}
    found = doc.get("versions")
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
