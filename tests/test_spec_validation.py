"""Golden spec fixtures: every valid one loads, every invalid one fails with its message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftflow.errors import SpecError
from peftflow.run import stages
from peftflow.spec import validate
from peftflow.spec.model import SpecKind, Stage

FIXTURES = Path(__file__).parent / "fixtures" / "specs"
EXPECTED = json.loads((FIXTURES / "invalid" / "expected.json").read_text())
LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\$\S*): .+")


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "valid").glob("*.yaml")))
def test_valid_fixture_loads_as_a_typed_spec(name: str) -> None:
    spec = validate.load_spec(FIXTURES / "valid" / name)
    assert spec.dag_id.startswith("fixture_")
    assert spec.path.name == name


def test_there_are_at_least_twenty_invalid_fixtures_each_with_an_expectation() -> None:
    files = {p.name for p in (FIXTURES / "invalid").glob("*.yaml")}
    assert len(files) >= 20
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_fixture_fails_with_its_located_message(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate.load_spec(FIXTURES / "invalid" / name)
    text = str(caught.value)
    assert re.search(EXPECTED[name], text), text
    for line in text.splitlines():
        assert LOCATED.match(line), f"not FILE:LINE:COL: $.path: message -> {line!r}"


def test_problem_lines_point_into_the_spec_file_itself() -> None:
    with pytest.raises(SpecError) as caught:
        validate.load_spec(FIXTURES / "invalid" / "negative_threshold.yaml")
    problem = caught.value.problems[0]
    source = (FIXTURES / "invalid" / "negative_threshold.yaml").read_text().splitlines()
    assert source[problem.line - 1][problem.col - 1:].startswith("-0.1")


def test_duplicate_dag_ids_make_both_files_invalid_each_naming_the_other() -> None:
    """A copied spec must not take over the original's DAG (the first sorted used to win)."""
    result = validate.validate_paths([FIXTURES / "duplicate"])
    assert result.specs == []
    first, second = sorted(result.problems, key=lambda p: p.file)
    assert first.file.endswith("a.yaml") and "b.yaml" in first.message
    assert second.file.endswith("b.yaml") and "a.yaml" in second.message
    assert all(p.path == "$.dag_id" and "also used by" in p.message for p in (first, second))


def test_project_specs_are_all_valid(project_root: Path) -> None:
    result = validate.validate_paths([project_root / "dag_specs"])
    assert result.problems == []
    kinds = {s.kind for s in result.specs}
    assert SpecKind.RETRAIN in kinds and SpecKind.PROFILE in kinds
    assert len(result.specs) >= 4


def test_spec_is_typed_with_defaults_applied() -> None:
    spec = validate.load_spec(FIXTURES / "valid" / "minimal.yaml")
    assert spec.gate.quality.max_invalid_records == 0
    assert spec.schedule.enabled is False
    assert spec.retry_policy(Stage.TRAIN).retries == 1
    assert spec.max_active_runs == 1
    full = validate.load_spec(FIXTURES / "valid" / "cron_full.yaml")
    assert full.retry_policy(Stage.TRAIN).retries == 2
    assert full.retry_policy(Stage.RELEASE).retries == 0
    assert full.retry_policy(Stage.RELEASE).retry_delay_s == 60
    assert full.gate.compare_to_release and full.gate.release_tolerance == 0.01
    assert {Stage.TRAIN, Stage.EVALUATE} == stages.gpu_names()


def test_retrain_spec_always_compares_with_the_current_release() -> None:
    spec = validate.load_spec(FIXTURES / "valid" / "retrain.yaml")
    assert spec.kind is SpecKind.RETRAIN
    assert spec.gate.compare_to_release and spec.gate.release_tolerance == 0.02


def test_schema_and_semantic_problems_are_reported_together(tmp_path: Path) -> None:
    """One run of `validate` shows everything: a schema error does not hide a missing file."""
    text = (FIXTURES / "valid" / "cron_full.yaml").read_text()
    text = text.replace("min_loss_improvement: 0.02", "min_loss_improvement: -0.5")  # schema
    text = text.replace("configs/profiles/smoke_cpu.yaml\n", "configs/profiles/nope.yaml\n", 1)
    text = text.replace('cron: "30 2 * * 1-5"', 'cron: "30 25 * * 1-5"')  # semantic
    spec_file = tmp_path / "both.yaml"
    spec_file.write_text(text)
    with pytest.raises(SpecError) as caught:
        validate.load_spec(spec_file)
    paths = [p.path for p in caught.value.problems]
    assert paths == ["$.gate.domain.min_loss_improvement", "$.training_profile",
                     "$.schedule.cron"], caught.value


def test_a_check_that_repeats_a_schema_problem_is_left_out(tmp_path: Path) -> None:
    text = (FIXTURES / "valid" / "cron_full.yaml").read_text()
    text = text.replace("orchestration_profile: airflow", "orchestration_profile: kubernetes")
    text = text.replace("training_profile: configs/profiles/smoke_cpu.yaml",
                        "training_profile: 42")
    spec_file = tmp_path / "typed.yaml"
    spec_file.write_text(text)
    with pytest.raises(SpecError) as caught:
        validate.load_spec(spec_file)
    problems = caught.value.problems
    assert [p.path for p in problems] == ["$.orchestration_profile", "$.training_profile"]
    assert "is not one of" in problems[0].message and "is not of type" in problems[1].message
