"""Test isolation: every test session gets its own AIRFLOW_HOME, artifact, release and audit
roots, set before anything imports Airflow (Airflow reads its config at import time)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSION = Path(tempfile.mkdtemp(prefix="peftflow-tests-"))


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


os.environ.update({
    "AIRFLOW_HOME": str(_SESSION / "airflow_home"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "DO_NOT_TRACK": "1",
    "PEFTFLOW_ARTIFACT_ROOT": str(_SESSION / "artifacts"),
    "PEFTFLOW_RELEASES_ROOT": str(_SESSION / "releases"),
    "PEFTFLOW_AUDIT_LOG": str(_SESSION / "audit" / "audit.jsonl"),
    # Nothing listens here: a test never reaches a deployment someone left running on 8080.
    "PEFTFLOW_API_PORT": str(_unused_port()),
})
os.environ.pop("PEFTFLOW_DB_URL", None)
os.environ.pop("PEFTFLOW_ORCHESTRATION_CONFIG", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION, ignore_errors=True)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION


@pytest.fixture(scope="session")
def smoke_base_model() -> Path:
    """The tiny random RWKV-7 of the smoke profile (deterministic; created if missing)."""
    from peftflow import profile
    from peftflow.train.tiny import init_tiny_rwkv7

    prof = profile.load(ROOT / "configs/profiles/smoke_cpu.yaml")
    path = prof.model.base_model_path()
    if not path.is_file():
        init_tiny_rwkv7(path, prof.model.n_layer, prof.model.n_embd, int(prof.model.init_seed))
    return path


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[None]:
    """A fresh SQLite metadata DB in the session's AIRFLOW_HOME, with the gpu pool."""
    from airflow.utils import db

    db.initdb()
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("gpu", 1, "single GPU", include_deferred=False)
    yield
