"""The edge deployment profile without live services: setup refuses it on SQLite, GPU stages
are routed to the EdgeExecutor and a queue (CPU stages stay local), and a worker refuses to
start when the shared roots it sees are not the main host's or its code differs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftflow.airflow import edge, expand, services
from peftflow.errors import ConfigError, SpecError
from peftflow.run import stages
from peftflow.spec import validate

PG_URL = "postgresql+psycopg2://airflow:pw@127.0.0.1:1/airflow"  # never connected to here
BIN = Path(sys.executable).parent


@pytest.fixture()
def main_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A main host's AIRFLOW_HOME and shared roots under tmp_path (nothing is started)."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PEFTFLOW_AIRFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PEFTFLOW_ARTIFACT_ROOT", str(tmp_path / "share" / "artifacts"))
    monkeypatch.setenv("PEFTFLOW_RELEASES_ROOT", str(tmp_path / "share" / "releases"))
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(tmp_path / "share" / "audit" / "audit.jsonl"))
    monkeypatch.delenv("PEFTFLOW_DB_URL", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTOR", raising=False)
    return tmp_path


def _worker_start(env_root: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run([str(BIN / "peftflow"), "worker", "start", "--api-url",
                           "http://127.0.0.1:9", "--wait", "5", *extra], env=full, cwd=env_root,
                          capture_output=True, text=True, timeout=120, check=False)


def test_setup_refuses_the_edge_profile_on_sqlite_and_says_why(
        main_host: Path, project_root: Path) -> None:
    done = subprocess.run([str(project_root / "setup_airflow.sh"), "--executor", "edge"],
                          env={**os.environ}, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode != 0
    assert "the edge profile needs PostgreSQL" in done.stderr
    assert "row locks" in done.stderr and "--db postgresql" in done.stderr
    assert not (main_host / "home" / "airflow.cfg").exists()  # refused before writing


def test_the_edge_profile_configures_hybrid_executors_the_edge_api_and_root_tokens(
        main_host: Path) -> None:
    services.configure(PG_URL, "edge")
    cfg = (main_host / "home" / "airflow.cfg").read_text()
    assert f"executor = {edge.HYBRID_EXECUTORS}" in cfg
    assert "api_enabled = True" in cfg and "/edge_worker/v1/rpcapi" in cfg
    assert edge.enabled()
    secret = (main_host / "home" / edge.SECRET_FILE)
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert f"jwt_secret = {secret.read_text().strip()}" in cfg
    tokens = [json.loads((main_host / "share" / d / edge.TOKEN_NAME).read_text())
              for d in ("artifacts", "releases", "audit")]
    assert len({t["deployment"] for t in tokens}) == 1
    assert all(secret.read_text().strip() not in json.dumps(t) for t in tokens)
    # a later setup without the flag keeps the profile and the deployment
    services.configure(PG_URL)
    assert edge.enabled()
    again = json.loads((main_host / "share" / "artifacts" / edge.TOKEN_NAME).read_text())
    assert again["deployment"] == tokens[0]["deployment"]
    assert edge.check_roots(secret.read_text().strip()) == tokens[0]["deployment"]


def test_a_worker_refuses_an_artifact_root_that_is_not_the_main_hosts(
        main_host: Path) -> None:
    services.configure(PG_URL, "edge")
    secret_file = str(main_host / "home" / edge.SECRET_FILE)
    local = main_host / "local-artifacts"
    local.mkdir()
    done = _worker_start(main_host, "--secret-file", secret_file,
                         PEFTFLOW_ARTIFACT_ROOT=str(local))
    assert done.returncode != 0, done.stdout
    assert f"artifacts root {local}: no {edge.TOKEN_NAME}" in done.stderr
    assert "Fix: mount the main host's artifact root" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (main_host / "home" / "edge-workers").exists()  # nothing started or written


def test_a_worker_refuses_roots_of_another_deployment_and_a_mount_at_another_path(
        main_host: Path, tmp_path: Path) -> None:
    services.configure(PG_URL, "edge")
    other = tmp_path / "other-secret"
    other.write_text("not-the-main-hosts-secret\n")
    with pytest.raises(ConfigError, match="belongs to another deployment"):
        edge.check_roots(other.read_text().strip())
    moved = tmp_path / "mnt" / "artifacts"
    moved.parent.mkdir()
    (tmp_path / "share" / "artifacts").rename(moved)
    os.environ["PEFTFLOW_ARTIFACT_ROOT"] = str(moved)  # the fixture's monkeypatch restores it
    secret = (main_host / "home" / edge.SECRET_FILE).read_text().strip()
    with pytest.raises(ConfigError, match="mount the share at that same path"):
        edge.check_roots(secret)


def test_a_worker_whose_code_differs_from_the_main_hosts_is_refused(main_host: Path) -> None:
    services.configure(PG_URL, "edge")
    token = main_host / "share" / "artifacts" / edge.TOKEN_NAME
    doc = json.loads(token.read_text())
    doc["versions"]["code"] = "0" * 64
    token.write_text(json.dumps(doc))
    done = _worker_start(main_host, "--secret-file", str(main_host / "home" / edge.SECRET_FILE))
    assert done.returncode != 0
    assert "versions differ from the main host's" in done.stderr
    assert "code: main host '0000" in done.stderr and "check out the main host's commit" in (
        done.stderr)


def test_gpu_stages_go_to_the_edge_executor_and_the_profiles_queue_cpu_stages_stay_local(
        project_root: Path) -> None:
    spec = validate.load_spec(project_root / "dag_specs" / "rwkv7_smoke_cpu.yaml")
    tasks = expand.dag_config(spec, edge=True)[spec.dag_id]["tasks"]
    for name in stages.names():
        if name in stages.gpu_names():
            assert tasks[name]["executor"] == "EdgeExecutor" and tasks[name]["queue"] == "gpu"
        else:
            assert "executor" not in tasks[name] and "queue" not in tasks[name]
    local = expand.dag_config(spec)[spec.dag_id]["tasks"]
    assert all("executor" not in t for t in local.values())


@pytest.fixture()
def queued_project(linked_project: Path, project_root: Path) -> Path:
    tmp_path = linked_project
    (tmp_path / "configs/devices.yaml").symlink_to(project_root / "configs/devices.yaml")
    profile = yaml.safe_load((project_root / "configs/profiles/smoke_cpu.yaml").read_text())
    (tmp_path / "configs/profiles").mkdir()
    (tmp_path / "configs/profiles/plain.yaml").write_text(yaml.safe_dump(profile))
    profile["runtime"]["queue"] = "host-b"
    (tmp_path / "configs/profiles/host_b.yaml").write_text(yaml.safe_dump(profile))
    spec = yaml.safe_load((project_root / "dag_specs/rwkv7_smoke_cpu.yaml").read_text())
    spec["dag_id"] = "on_host_b"
    spec["training_profile"] = "configs/profiles/host_b.yaml"
    (tmp_path / "host_b.yaml").write_text(yaml.safe_dump(spec))
    spec["dag_id"] = "mixed"
    spec["trigger"]["allowed_profiles"] = ["configs/profiles/plain.yaml"]
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def test_a_profile_names_the_queue_and_a_trigger_cannot_switch_it(queued_project: Path) -> None:
    spec = validate.load_spec(queued_project / "host_b.yaml")
    tasks = expand.dag_config(spec, edge=True)["on_host_b"]["tasks"]
    assert tasks["train_adapter"]["queue"] == tasks["evaluate_adapter"]["queue"] == "host-b"
    with pytest.raises(SpecError) as err:
        validate.load_spec(queued_project / "mixed.yaml")
    problem = next(p for p in err.value.problems if p.path == "$.trigger.allowed_profiles")
    assert "different runtime.queue values (gpu, host-b)" in problem.message


def test_airflow_accepts_the_routed_dag_under_the_hybrid_executors(
        main_host: Path, project_root: Path) -> None:
    """The dag-processor's view: Airflow refuses a task naming an executor it does not run,
    so this parses the real DAG folder with the edge profile's airflow.cfg."""
    services.configure(PG_URL, "edge")
    code = ("from airflow.dag_processing.dagbag import BundleDagBag; import json, sys; "
            f"bag = BundleDagBag({str(project_root / 'dags')!r}, "
            f"bundle_path={str(project_root / 'dags')!r}, bundle_name='dags'); "
            "dag = bag.dags['rwkv7_smoke_cpu']; "
            "print(json.dumps({'errors': list(bag.import_errors.values()), 'tasks': "
            "{t.task_id: [t.executor, t.queue] for t in dag.tasks}}))")
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
           f"sqlite:///{main_host / 'unused.db'}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == []
    assert found["tasks"]["train_adapter"] == ["EdgeExecutor", "gpu"]
    assert found["tasks"]["evaluate_adapter"] == ["EdgeExecutor", "gpu"]
    assert found["tasks"]["prepare_dataset"][0] is None
    assert found["tasks"]["release_adapter"][0] is None


def test_a_worker_refuses_a_queue_or_gpu_that_is_not_a_plain_name(main_host: Path) -> None:
    services.configure(PG_URL, "edge")
    secret = str(main_host / "home" / edge.SECRET_FILE)
    done = _worker_start(main_host, "--secret-file", secret, "--queues", "gpu,$(touch x)")
    assert done.returncode != 0 and "'$(touch x)' is not a queue name" in done.stderr
    done = _worker_start(main_host, "--secret-file", secret, "--gpus", "7")
    assert done.returncode != 0 and "7 not in this host's GPU inventory" in done.stderr
    assert not (main_host / "x").exists() and "Traceback" not in done.stderr
