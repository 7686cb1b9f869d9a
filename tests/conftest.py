"""Test isolation: every test session gets its own AIRFLOW_HOME, artifact, release and audit
roots, set before anything imports Airflow (Airflow reads its config at import time)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
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
    # Never the user's host-wide locks: a test must not wait for (or block) a real training.
    "PEFTFLOW_DEVICE_LOCK_DIR": str(_SESSION / "device-locks"),
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


@pytest.fixture()
def linked_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_root: Path) -> Path:
    """tmp_path as the project root, with the real one's schemas, data, models, eval suites
    and configs linked in (no GPU inventory: a test writes or links its own); the real root
    stays an allowed root, so the shipped profiles and specs can be referenced."""
    for shared in ("schemas", "data", "models", "configs/eval", "configs/orchestration.yaml",
                   "configs/pools.json"):
        (tmp_path / shared).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / shared).symlink_to(project_root / shared)
    monkeypatch.setenv("PEFTFLOW_PROJECT_ROOT", str(tmp_path))
    monkeypatch.setenv("PEFTFLOW_ALLOWED_ROOTS", str(project_root))
    monkeypatch.delenv("PEFTFLOW_MODELS_ROOT", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION


@pytest.fixture(scope="session")
def smoke_base_model() -> Path:
    """The tiny random RWKV-7 of the smoke profile (deterministic; created if missing)."""
    from peftflow.train import training_profile as profile
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


@pytest.fixture(scope="session")
def smoke_binidx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke corpus as binidx: reference World tokenizer, EOD (0) after each document."""
    import json

    import numpy as np
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    from peftflow.dataset import binidx, tokenizer

    encoder = TRIE_TOKENIZER(str(tokenizer.vocab_path()))
    docs = []
    corpus = ROOT / "data" / "smoke" / "pydoc-docs" / "v1" / "train.jsonl"
    for line in corpus.read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        if text:
            docs.append(np.array([*encoder.encode(text), 0], dtype=np.uint16))
    prefix = tmp_path_factory.mktemp("smoke-data") / "train_text_document"
    binidx.write(prefix, docs)
    return prefix


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, smoke_binidx: Path,
              smoke_base_model: Path) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    """The smoke profile trained once per session with the real script: (result, out, seconds).

    Shared by the training and evaluation tests; treat `out` as read-only.
    """
    out = tmp_path_factory.mktemp("smoke-run")
    script = ROOT / "scripts" / "train_adapter.sh"
    t0 = time.monotonic()
    profile = ROOT / "configs" / "profiles" / "smoke_cpu.yaml"
    result = subprocess.run([str(script), "--profile", str(profile), "--data-prefix",
                             str(smoke_binidx), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    return result, out, time.monotonic() - t0
