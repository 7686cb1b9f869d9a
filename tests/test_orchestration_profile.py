"""Only one orchestration profile may run training: airflow or mlops-lite."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from peftflow.cli import profile as profile_cli
from peftflow.spec import orchestration, validate
from peftflow.store import audit


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "orchestration.yaml"
    path.write_text("active_profile: mlops-lite\n")
    monkeypatch.setenv("PEFTFLOW_ORCHESTRATION_CONFIG", str(path))
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    return path


def _bag(tmp_path: Path, project_root: Path):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import BundleDagBag

    dags = tmp_path / "dags"
    if not dags.exists():
        dags.mkdir()
        shutil.copy(project_root / "dags" / "peftflow_dags.py", dags)
        shutil.copytree(project_root / "dag_specs", tmp_path / "dag_specs")
    return BundleDagBag(str(dags), bundle_path=str(dags), bundle_name="dags")


def test_mlops_lite_registers_no_training_dags_and_says_why(
        config: Path, tmp_path: Path, project_root: Path) -> None:
    bag = _bag(tmp_path, project_root)
    assert bag.dags == {}
    (message,) = bag.import_errors.values()
    assert "active orchestration profile is 'mlops-lite'" in message
    assert "--switch-profile airflow" in message


def test_switching_back_restores_the_dags_and_is_audited(
        config: Path, tmp_path: Path, project_root: Path) -> None:
    assert profile_cli.switch("airflow", actor="tester") is True
    assert orchestration.load().active is orchestration.OrchestrationProfile.AIRFLOW
    bag = _bag(tmp_path, project_root)
    assert bag.import_errors == {}
    assert "rwkv7_smoke_cpu" in bag.dags
    (event,) = audit.events(tmp_path / "audit.jsonl")
    assert event["event"] == "profile_switched" and event["actor"] == "tester"
    assert event["details"] == {"from": "mlops-lite", "to": "airflow"}
    assert profile_cli.switch("airflow", actor="tester") is False  # already active


def test_validate_reports_every_spec_of_the_inactive_profile(config: Path,
                                                             project_root: Path) -> None:
    result = validate.validate_paths([project_root / "dag_specs"])
    assert result.specs == []
    assert all("belongs to 'airflow' but the active orchestration profile is 'mlops-lite'"
               in p.message for p in result.problems)


def test_setup_refuses_to_install_the_airflow_profile_unless_asked_to_switch(
        config: Path, tmp_path: Path, project_root: Path) -> None:
    home = tmp_path / "airflow_home"
    env = {**os.environ, "PEFTFLOW_AIRFLOW_HOME": str(home)}
    done = subprocess.run(["bash", str(project_root / "setup_airflow.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "active orchestration profile is 'mlops-lite'" in done.stderr
    assert "--switch-profile airflow" in done.stderr
    assert not home.exists()
