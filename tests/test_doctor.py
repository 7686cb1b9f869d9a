"""`peftflow doctor`: the checks Airflow itself stays silent about."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from peftflow import doctor, profile


@pytest.fixture()
def gpu_pool(airflow_db: None) -> Iterator[None]:
    from airflow.models.pool import Pool

    yield
    Pool.create_or_update_pool("gpu", 1, "single GPU", include_deferred=False)


def test_pool_with_one_slot_passes(gpu_pool: None) -> None:
    assert doctor.pool_check().level == "ok"


def test_pool_with_more_than_one_slot_fails_loudly(gpu_pool: None) -> None:
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("gpu", 2, "oops", include_deferred=False)
    check = doctor.pool_check()
    assert check.level == "fail" and "2 slots" in check.detail
    assert "airflow pools set gpu 1" in check.detail


def test_missing_pool_fails_and_says_how_to_create_it(gpu_pool: None) -> None:
    from airflow.models.pool import Pool

    Pool.delete_pool("gpu")
    check = doctor.pool_check()
    assert check.level == "fail" and "does not exist" in check.detail
    assert "airflow pools import configs/pools.json" in check.detail


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
