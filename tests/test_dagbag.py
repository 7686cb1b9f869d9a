"""The DAG folder as Airflow's dag-processor sees it (BundleDagBag puts dags/ on sys.path)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from peftflow.run import stages
from peftflow.spec import validate
from peftflow.spec.model import Spec, SpecKind, Stage

TASK_ORDER = ["prepare_dataset", "train_adapter", "evaluate_adapter", "release_gate",
              "release_adapter", "run_summary"]


def _bag(dags_folder: Path):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(str(dags_folder), bundle_path=str(dags_folder), bundle_name="dags")


@pytest.fixture(scope="module")
def project_bag(project_root: Path):  # type: ignore[no-untyped-def]
    return _bag(project_root / "dags")


@pytest.fixture(scope="module")
def specs(project_root: Path) -> list[Spec]:
    return validate.validate_paths([project_root / "dag_specs"]).specs


def test_dag_folder_has_no_import_errors(project_bag) -> None:  # type: ignore[no-untyped-def]
    assert project_bag.import_errors == {}


def test_every_spec_becomes_its_dag(project_bag, specs: list[Spec]) -> None:  # type: ignore[no-untyped-def]
    assert specs, "no specs found"
    assert sorted(project_bag.dags) == sorted(s.dag_id for s in specs)


def test_each_dag_has_the_stage_chain_pools_and_retries_of_its_spec(  # type: ignore[no-untyped-def]
        project_bag, specs: list[Spec]) -> None:
    for spec in specs:
        dag = project_bag.dags[spec.dag_id]
        assert sorted(dag.task_dict) == sorted(TASK_ORDER)
        for upstream, downstream in itertools.pairwise(TASK_ORDER):
            assert dag.task_dict[downstream].upstream_task_ids == {upstream}
        for stage in stages.names():
            task = dag.task_dict[stage]
            assert task.pool == ("gpu" if stage in stages.gpu_names() else "default_pool"), stage
            assert task.retries == spec.retry_policy(stage).retries
            assert task.retry_delay.total_seconds() == spec.retry_policy(stage).retry_delay_s
        assert dag.task_dict["release_gate"].retries == 0
        summary = dag.task_dict["run_summary"]
        assert summary.is_teardown and summary.retries == 0
        assert dag.max_active_runs == spec.max_active_runs
        assert "peftflow" in dag.tags


def test_schedules_follow_the_spec(project_bag, specs: list[Spec]) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import CronTriggerTimetable

    for spec in specs:
        dag = project_bag.dags[spec.dag_id]
        if spec.kind is SpecKind.RETRAIN:
            assert "Asset" in type(dag.timetable).__name__
        elif spec.schedule.enabled:
            assert isinstance(dag.timetable, CronTriggerTimetable)
        else:
            assert type(dag.timetable).__name__ == "NullTimetable"


def test_trigger_params_are_declared_with_bounds(project_bag, specs: list[Spec]) -> None:  # type: ignore[no-untyped-def]
    for spec in specs:
        params = project_bag.dags[spec.dag_id].params
        assert params.get_param("note").schema["maxLength"] == spec.trigger.note_max_length
        assert params.get_param("training_profile").schema["enum"][0] == spec.training_profile


def _copy_project_dags(tmp_path: Path, project_root: Path) -> tuple[Path, Path]:
    dags = tmp_path / "dags"
    specs = tmp_path / "dag_specs"
    dags.mkdir()
    shutil.copy(project_root / "dags" / "peftflow_dags.py", dags)
    shutil.copytree(project_root / "dag_specs", specs)
    return dags, specs


def test_broken_spec_does_not_hide_other_dags(tmp_path: Path, project_root: Path,
                                               specs: list[Spec]) -> None:
    """No import error (Airflow 3 would mark every DAG of the loader file stale): a marked DAG."""
    dags, spec_dir = _copy_project_dags(tmp_path, project_root)
    (spec_dir / "zz_broken.yaml").write_text("dag_id: zz_broken\nowner: [oops\n")
    bag = _bag(dags)
    assert bag.import_errors == {}
    valid = sorted(s.dag_id for s in specs)
    assert sorted(bag.dags) == sorted([*valid, "invalid_spec__zz_broken"])
    placeholder = bag.dags["invalid_spec__zz_broken"]
    assert "invalid-spec" in placeholder.tags
    assert placeholder.description.startswith("INVALID SPEC ")
    assert "dag_specs/zz_broken.yaml: $: YAML syntax error" in placeholder.description
    assert "zz_broken.yaml:" in placeholder.doc_md and "YAML syntax error" in placeholder.doc_md
    assert placeholder.timetable.__class__.__name__ == "NullTimetable"


def test_every_broken_spec_gets_its_own_marked_dag_with_the_cli_lines(
        tmp_path: Path, project_root: Path) -> None:
    dags, spec_dir = _copy_project_dags(tmp_path, project_root)
    (spec_dir / "a_empty.yaml").write_text("")
    (spec_dir / "b_typo.yaml").write_text(
        (project_root / "tests/fixtures/specs/invalid/unknown_top_level_key.yaml").read_text())
    bag = _bag(dags)
    assert bag.import_errors == {}
    assert "dag_specs/a_empty.yaml:1:1: $: the file is empty" in \
        bag.dags["invalid_spec__a_empty"].doc_md
    assert "dag_specs/b_typo.yaml:12:1: $.retires: unknown key 'retires'" in \
        bag.dags["invalid_spec__b_typo"].doc_md
    assert "rwkv7_smoke_cpu" in bag.dags


def test_triggering_the_marked_dag_fails_with_the_problems() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from operators.invalid_spec import InvalidSpecOperator

    op = InvalidSpecOperator(task_id="spec_problems", spec_file="dag_specs/x.yaml",
                             problems="dag_specs/x.yaml:1:1: $: the file is empty")
    with pytest.raises(AirflowFailException, match="the file is empty"):
        op.execute({})


def test_gpu_stages_always_use_the_gpu_pool_even_if_expansion_is_tampered(  # type: ignore[no-untyped-def]
        monkeypatch, specs: list[Spec]) -> None:
    from peftflow.airflow import expand, loader

    original = expand.dag_config

    def without_pool(spec: Spec, edge: bool = False):  # type: ignore[no-untyped-def]
        config = original(spec, edge)
        config[spec.dag_id]["tasks"][Stage.TRAIN.value].pop("pool")
        return config

    monkeypatch.setattr(expand, "dag_config", without_pool)
    built: dict[str, object] = {}
    loader.load(Path(specs[0].path).parent, built)
    assert specs[0].dag_id not in built
    placeholders = [d for d in built if d.startswith("invalid_spec__")]
    assert placeholders
    assert "outside pool 'gpu'" in built[placeholders[0]].doc_md


def test_params_are_optional_or_prefilled_and_an_unallowed_override_is_refused(  # type: ignore[no-untyped-def]
        project_bag) -> None:
    import pytest as _pytest
    from airflow.sdk.definitions.param import ParamValidationError

    dag = project_bag.dags["rwkv7_smoke_cpu"]
    dag.params.validate()  # the defaults alone are a valid trigger (no --conf needed)
    schema = {name: dag.params.get_param(name).schema for name in dag.params}
    assert "null" in schema["note"]["type"]
    assert schema["override_gate"].get("const") is False  # hidden, and only false passes
    import copy

    asked = copy.deepcopy(dag.params)
    with _pytest.raises(ParamValidationError, match="override_gate"):
        asked.update({"override_gate": True})  # what a trigger's conf does to the params
        asked.validate()
