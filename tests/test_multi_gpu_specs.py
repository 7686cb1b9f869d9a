"""Specs against the GPU inventory: a profile may not ask for more devices than the host has,
and a GPU task takes as many pool slots as the devices its profiles ask for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftflow.airflow import expand
from peftflow.errors import SpecError
from peftflow.spec import validate
from peftflow.spec.cache import SpecCache


@pytest.fixture()
def deployment(linked_project: Path, project_root: Path) -> Path:
    """A project root (the real one's data, suites and schemas linked in) with a 2-device and
    a 3-device training profile, a smoke spec on the first and a twin that also allows the
    second at trigger time; the inventory starts with 1 device."""
    tmp_path = linked_project
    profile = yaml.safe_load((project_root / "configs/profiles/smoke_cpu.yaml").read_text())
    (tmp_path / "configs/profiles").mkdir()
    for name, devices in (("two.yaml", 2), ("three.yaml", 3)):
        profile["runtime"]["devices"] = devices
        (tmp_path / "configs/profiles" / name).write_text(yaml.safe_dump(profile))
    spec = yaml.safe_load((project_root / "dag_specs/rwkv7_smoke_cpu.yaml").read_text())
    spec["dag_id"] = "two_gpu"
    spec["training_profile"] = "configs/profiles/two.yaml"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    spec["dag_id"] = "three_allowed"
    spec["trigger"]["allowed_profiles"] = ["configs/profiles/three.yaml"]
    (tmp_path / "allowed.yaml").write_text(yaml.safe_dump(spec))
    inventory(tmp_path, 1)
    return tmp_path


def inventory(root: Path, devices: int) -> None:
    """configs/devices.yaml of the project root (the default place)."""
    ids = "".join(f'  - {{id: "{i}"}}\n' for i in range(devices))
    (root / "configs" / "devices.yaml").write_text(f"devices:\n{ids}")


def test_a_profile_asking_for_more_devices_than_the_inventory_is_refused_with_the_fix(
        deployment: Path) -> None:
    with pytest.raises(SpecError) as err:
        validate.load_spec(deployment / "spec.yaml")
    problem = next(p for p in err.value.problems if p.path == "$.training_profile")
    assert "runtime.devices: 2" in problem.message and "lists 1 device(s): 0" in problem.message
    assert "rerun ./setup_airflow.sh" in problem.message and problem.line > 1


def test_a_trigger_choosable_profile_counts_too(deployment: Path) -> None:
    inventory(deployment, 2)
    with pytest.raises(SpecError) as err:
        validate.load_spec(deployment / "allowed.yaml")
    [problem] = err.value.problems
    assert problem.path == "$.trigger.allowed_profiles[0]"
    assert "runtime.devices: 3" in problem.message


def test_gpu_tasks_take_one_pool_slot_per_device_their_profiles_ask_for(
        deployment: Path) -> None:
    inventory(deployment, 2)
    spec = validate.load_spec(deployment / "spec.yaml")
    assert spec.max_devices == {"devices": 2, "eval_devices": 1}
    tasks = expand.dag_config(spec)["two_gpu"]["tasks"]
    assert (tasks["train_adapter"]["pool"], tasks["train_adapter"]["pool_slots"]) == ("gpu", 2)
    assert (tasks["evaluate_adapter"]["pool"], tasks["evaluate_adapter"]["pool_slots"]) == (
        "gpu", 1)
    assert "pool" not in tasks["prepare_dataset"]
    inventory(deployment, 3)
    allowed = expand.dag_config(validate.load_spec(deployment / "allowed.yaml"))
    assert allowed["three_allowed"]["tasks"]["train_adapter"]["pool_slots"] == 3


def test_a_cached_spec_keeps_its_slots_and_a_shrunk_inventory_revalidates(
        deployment: Path) -> None:
    inventory(deployment, 2)
    cache = SpecCache(deployment / "cache.json")
    validate.load_spec(deployment / "spec.yaml", cache=cache)
    cache.save()
    warm = SpecCache(deployment / "cache.json")
    assert validate.load_spec(deployment / "spec.yaml", cache=warm).max_devices["devices"] == 2
    inventory(deployment, 1)  # a card taken out of the box
    with pytest.raises(SpecError, match="runtime.devices: 2"):
        validate.load_spec(deployment / "spec.yaml", cache=SpecCache(deployment / "cache.json"))


def test_an_unreadable_inventory_does_not_take_the_dags_down(deployment: Path) -> None:
    """A broken devices.yaml is doctor's to report, and each GPU stage's when it leases: the
    specs still load (single-GPU slots), so no DAG disappears over a deployment file."""
    (deployment / "configs" / "devices.yaml").write_text("devices: [{id: 0\n")
    spec = validate.load_spec(deployment / "spec.yaml")
    assert spec.max_devices["devices"] == 2
