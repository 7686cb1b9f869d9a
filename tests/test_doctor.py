"""`peftflow doctor`: the checks Airflow itself stays silent about."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from peftflow.cli import doctor
from peftflow.train import training_profile as profile


@pytest.fixture()
def gpu_pool(airflow_db: None) -> Iterator[None]:
    from airflow.models.pool import Pool

    yield
    Pool.create_or_update_pool("gpu", 1, "single GPU", include_deferred=False)


def test_pool_with_one_slot_per_device_passes(gpu_pool: None) -> None:
    check = doctor.pool_check()
    assert check.level == "ok" and "1 slot(s), one per device" in check.detail


def test_pool_with_more_slots_than_devices_fails_loudly(gpu_pool: None) -> None:
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("gpu", 2, "oops", include_deferred=False)
    check = doctor.pool_check()
    assert check.level == "fail" and "2 slot(s)" in check.detail
    assert "1 device(s)" in check.detail and "peftflow devices sync-pool" in check.detail


def test_pool_sized_by_sync_pool_follows_an_inventory_of_two(
        gpu_pool: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.cli import devices

    inventory = tmp_path / "devices.yaml"
    inventory.write_text('devices:\n  - {id: "0"}\n  - {id: "1"}\n')
    monkeypatch.setenv("PEFTFLOW_DEVICES_CONFIG", str(inventory))
    assert doctor.pool_check().level == "fail"
    assert devices.cmd_sync_pool(None) == 0  # type: ignore[arg-type]
    check = doctor.pool_check()
    assert check.level == "ok" and "2 slot(s)" in check.detail


def test_missing_pool_fails_and_says_how_to_create_it(gpu_pool: None) -> None:
    from airflow.models.pool import Pool

    Pool.delete_pool("gpu")
    check = doctor.pool_check()
    assert check.level == "fail" and "does not exist" in check.detail
    assert "peftflow devices sync-pool" in check.detail


def test_gpu_profile_resources_are_failures_when_asked_for_that_profile(
        project_root: Path) -> None:
    prof = profile.load(project_root / "configs/profiles/rwkv7_1b5_lora.yaml")
    checks = {c.name.split(": ", 1)[1]: c for c in doctor.profile_checks(prof, strict=True)}
    assert checks["base model"].level == "fail"
    assert "PEFTFLOW_MODELS_ROOT" in checks["base model"].detail
    assert checks["RWKV-PEFT checkout"].level == "fail"
    lenient = doctor.profile_checks(prof, strict=False)
    assert {c.level for c in lenient} <= {"ok", "warn"}


def test_smoke_profile_resources_are_present(project_root: Path,
                                             smoke_base_model: Path) -> None:
    prof = profile.load(project_root / "configs/profiles/smoke_cpu.yaml")
    assert [c.level for c in doctor.profile_checks(prof, strict=True)] == ["ok"]


GPU_PROFILE = "configs/profiles/rwkv7_1b5_lora.yaml"
PIN = "5b8aac9cbed9474fb9f13332ffe9bd1aa377b7d2"


def _gpu_profile(project_root: Path, tmp_path: Path, **rwkv_peft: str) -> profile.Profile:
    """The shipped GPU profile with its rwkv_peft paths moved into tmp_path."""
    import yaml

    data = yaml.safe_load((project_root / GPU_PROFILE).read_text())
    data["rwkv_peft"] = {"checkout": str(tmp_path / "RWKV-PEFT"),
                         "python": str(tmp_path / "RWKV-PEFT/.venv/bin/python"), **rwkv_peft}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return profile.load(path)


def _fake_nvidia_smi(folder: Path, body: str) -> Path:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_every_failing_gpu_check_ends_with_the_command_that_fixes_it(
        project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_MODELS_ROOT", str(tmp_path / "models"))
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    prof = _gpu_profile(project_root, tmp_path)
    checks = {c.name.split(": ", 1)[1]: c for c in doctor.profile_checks(prof, strict=True)}
    base = tmp_path / "models" / "rwkv7-g1-1.5b-20250429-ctx4096.pth"
    checkout = tmp_path / "RWKV-PEFT"
    venv = checkout / ".venv"
    expected = {
        "base model": f"mkdir -p {base.parent} && curl -fL -o {base} "
                      f"https://huggingface.co/BlinkDL/rwkv7-g1/resolve/main/{base.name}",
        "RWKV-PEFT checkout": f"git clone https://github.com/JL-er/RWKV-PEFT {checkout} && "
                              f"git -C {checkout} checkout {PIN}",
        "RWKV-PEFT python": f"-m venv {venv} && {venv}/bin/python -m pip install torch -r "
                            f"{checkout}/requirements.txt",
        "CUDA GPU": "nvidia-smi",
    }
    for name, command in expected.items():
        assert checks[name].level == "fail"
        assert checks[name].detail.endswith(command), checks[name].detail
    assert "PEFTFLOW_MODELS_ROOT" in checks["base model"].detail


def test_checkout_at_another_commit_fails_and_says_how_to_move_to_the_pin(
        project_root: Path, tmp_path: Path) -> None:
    import subprocess

    checkout = tmp_path / "RWKV-PEFT"
    checkout.mkdir()
    (checkout / "train.py").write_text("# not the real one\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    pin = {"repository": "https://github.com/JL-er/RWKV-PEFT", "commit": PIN}
    check = doctor.checkout_check(_gpu_profile(project_root, tmp_path), pin, "fail")
    assert check.level == "fail" and "not the pinned 5b8aac9" in check.detail
    assert check.detail.endswith(f"git -C {checkout} fetch origin && git -C {checkout} "
                                 f"checkout {PIN}")


def test_rwkv_peft_python_without_its_requirements_names_the_pip_install(
        project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(doctor, "RWKV_PEFT_MODULES", ("json", "no_such_module_for_doctor"))
    prof = _gpu_profile(project_root, tmp_path, python=sys.executable)
    pin = {"python": ">=3.10,<3.13"}
    check = doctor.python_check(prof, pin, "fail")
    assert check.level == "fail" and "lacks no_such_module_for_doctor" in check.detail
    assert check.detail.endswith(f"{sys.executable} -m pip install torch -r "
                                 f"{tmp_path}/RWKV-PEFT/requirements.txt")
    too_old = doctor.python_check(prof, {"python": "<3.0"}, "fail")
    assert "RWKV-PEFT needs <3.0" in too_old.detail and " -m venv " in too_old.detail


@pytest.mark.parametrize(("body", "level", "shown"), [
    ("echo 'NVIDIA-SMI has failed because it could not communicate with the driver'; exit 9",
     "fail", "could not communicate with the driver"),
    ("echo 'GPU 0: NVIDIA H200 (UUID: GPU-1)'", "ok", "GPU 0: NVIDIA H200"),
])
def test_gpu_check_asks_nvidia_smi(project_root: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, body: str, level: str,
                                   shown: str) -> None:
    smi = _fake_nvidia_smi(tmp_path, body)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: str(smi))
    check = doctor.gpu_check(_gpu_profile(project_root, tmp_path), "fail")
    assert check.level == level and shown in check.detail
    if level == "fail":
        assert check.detail.endswith(": nvidia-smi")


def test_missing_tiny_smoke_model_is_fixed_by_init_tiny(
        project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_MODELS_ROOT", str(tmp_path))
    prof = profile.load(project_root / "configs/profiles/smoke_cpu.yaml")
    check = doctor.base_model_check(prof, "fail")
    assert check.detail.endswith("Fix: peftflow model init-tiny --profile "
                                 "configs/profiles/smoke_cpu.yaml")


def test_missing_nvcc_for_the_cuda_kernel_names_the_check_command(
        project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    check = doctor.nvcc_check(_gpu_profile(project_root, tmp_path), "fail")
    assert check.level == "fail" and "runtime.op: fla" in check.detail
    assert check.detail.endswith("then check: nvcc --version")


def test_a_paused_retrain_dag_is_a_warning_naming_unpause_and_announce(airflow_db: None) -> None:
    from airflow.models.dag import DagModel
    from airflow.models.dagbundle import DagBundleModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.merge(DagBundleModel(name="dags-folder"))
        session.flush()
        session.merge(DagModel(dag_id="rwkv7_smoke_retrain", is_paused=True,
                               bundle_name="dags-folder"))
    try:
        [check] = doctor.retrain_checks()
        assert check.level == "warn" and "paused" in check.detail
        assert "airflow dags unpause rwkv7_smoke_retrain" in check.detail
        assert "peftflow dataset announce" in check.detail
        with create_session() as session:
            session.get(DagModel, "rwkv7_smoke_retrain").is_paused = False
        [check] = doctor.retrain_checks()
        assert check.level == "ok"
    finally:
        with create_session() as session:
            session.delete(session.get(DagModel, "rwkv7_smoke_retrain"))


def test_doctor_without_named_profiles_checks_the_profile_of_every_spec(
        project_root: Path) -> None:
    """The default path: no --profile, so the profiles come from dag_specs/ (resolved at
    validation); it must report, never raise."""
    checks = doctor.run(airflow_only=False, profiles=[])
    names = [c.name for c in checks]
    assert any(n.startswith("smoke-cpu: ") for n in names), names
