"""`peftflow plan`: the dry run predicts exactly what the tasks will reuse or run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagtest_support import task_context

from operators.stage import StageOperator
from peftflow.cli import main as cli
from peftflow.cli import plan as plan_cli
from peftflow.spec import validate

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "dag_specs" / "rwkv7_smoke_cpu.yaml"


@pytest.fixture()
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEFTFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    return tmp_path / "artifacts"


def _actions(params: dict[str, object] | None = None) -> dict[str, plan_cli.Step]:
    steps = plan_cli.steps(validate.load_spec(SPEC), dict(params or {}))
    return {s.stage: s for s in steps}


def test_with_nothing_done_yet_every_stage_runs_and_only_prepare_has_a_key(
        artifacts: Path) -> None:
    steps = _actions()
    assert [(s.stage, s.action) for s in steps.values()] == [
        ("prepare_dataset", "run"), ("train_adapter", "run"), ("evaluate_adapter", "run"),
        ("release_gate", "gate"), ("release_adapter", "run")]
    assert steps["prepare_dataset"].cache_key and steps["train_adapter"].cache_key is None
    assert "--manifest" in steps["prepare_dataset"].argv
    assert not artifacts.exists()  # a dry run writes no artifact


def test_after_a_real_prepare_the_plan_reuses_it_with_the_key_the_task_used(
        artifacts: Path, smoke_base_model: Path) -> None:
    predicted = _actions()["prepare_dataset"].cache_key
    op = StageOperator(task_id="prepare_dataset", stage="prepare_dataset", spec_file=str(SPEC))
    record = op.execute(task_context("prepare_dataset", "rwkv7_smoke_cpu", "manual__p1"))
    assert record["cache_key"] == predicted

    steps = _actions()
    assert steps["prepare_dataset"].action == "reuse"
    assert Path(record["status_path"]).parent.name in steps["prepare_dataset"].detail
    train = steps["train_adapter"]
    assert train.action == "run" and train.cache_key  # known now: its inputs exist
    assert steps["evaluate_adapter"].detail.startswith("after train_adapter")
    forced = _actions({"force_rerun": True})["prepare_dataset"]
    assert forced.action == "run" and forced.detail == "force_rerun"


def test_a_param_the_spec_does_not_allow_blocks_the_plan(
        artifacts: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        cli.main(["plan", str(SPEC), "--param", "dataset_manifest=data/other.manifest.json"])
    assert code.value.code == 1
    out = capsys.readouterr().out
    assert "prepare_dataset   blocked             inputs rejected: dataset_manifest" in out
    assert "is not allowed by rwkv7_smoke_cpu.yaml" in out


def test_an_unknown_param_is_a_usage_error(artifacts: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        cli.main(["plan", str(SPEC), "--param", "lr=1"])
    assert code.value.code == 2
    assert "--param 'lr=1': use NAME=VALUE with NAME one of" in capsys.readouterr().err


def test_json_output_lists_every_stage(artifacts: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        cli.main(["plan", str(SPEC), "--json"])
    assert code.value.code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows][-2:] == ["release_gate", "release_adapter"]


RETRAIN = ROOT / "dag_specs" / "rwkv7_smoke_retrain.yaml"


@pytest.fixture()
def dataset_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts: Path) -> Path:
    """pydoc-docs v2 registered (without an event) outside the project, in an allowed root."""
    monkeypatch.setenv("PEFTFLOW_RELEASES_ROOT", str(tmp_path / "releases"))
    monkeypatch.setenv("PEFTFLOW_ALLOWED_ROOTS", str(tmp_path))
    data = tmp_path / "pydoc-docs" / "v2" / "train.jsonl"
    data.parent.mkdir(parents=True)
    v1 = ROOT / "data" / "smoke" / "pydoc-docs" / "v1" / "train.jsonl"
    data.write_text(v1.read_text(encoding="utf-8") + '{"text": "new in v2"}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as code:
        cli.main(["dataset", "register", str(data), "--name", "pydoc-docs", "--version", "v2",
                  "--no-announce"])
    assert code.value.code == 0
    return data.with_name("train.manifest.json")


def test_a_retrain_planned_with_the_dataset_event_of_a_new_version_runs_on_it(
        dataset_v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        cli.main(["plan", str(RETRAIN), "--dataset-event", str(dataset_v2), "--json"])
    assert code.value.code == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    prepare = rows["prepare_dataset"]
    assert prepare["action"] == "run"
    assert prepare["argv"][prepare["argv"].index("--manifest") + 1] == str(dataset_v2)
    assert "no release of smoke-cpu yet, so no comparison" in rows["release_gate"]["detail"]


def test_the_dataset_event_extra_is_the_one_registering_announces(dataset_v2: Path) -> None:
    from peftflow.airflow import triggers

    spec = validate.load_spec(RETRAIN)
    assert plan_cli.dataset_event(spec, str(dataset_v2)) == triggers.event_extra(
        dataset_v2, "pydoc-docs", "v2")


def test_a_new_version_as_a_trigger_param_is_blocked_and_points_to_the_dataset_event(
        dataset_v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        cli.main(["plan", str(RETRAIN), "--param", f"dataset_manifest={dataset_v2}"])
    assert code.value.code == 1
    out = capsys.readouterr().out
    assert f"plan such a run with --dataset-event {dataset_v2}" in out
    for stage in ("train_adapter", "evaluate_adapter", "release_gate", "release_adapter"):
        assert f"  {stage.ljust(16)}  blocked (upstream)  prepare_dataset is blocked" in out


def test_stages_after_a_blocked_one_are_blocked_upstream_not_run(artifacts: Path) -> None:
    steps = _actions({"dataset_manifest": "data/other.manifest.json"})
    assert [(s.stage, s.action) for s in steps.values()] == [
        ("prepare_dataset", "blocked"), ("train_adapter", "blocked_upstream"),
        ("evaluate_adapter", "blocked_upstream"), ("release_gate", "blocked_upstream"),
        ("release_adapter", "blocked_upstream")]
    assert steps["release_adapter"].detail == "prepare_dataset is blocked"


def test_the_gate_line_names_the_release_a_retrain_would_compare_with(
        dataset_v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from peftflow.release import registry

    released = SimpleNamespace(profile="smoke-cpu", version="r0007",
                               metrics_path=dataset_v2.parent / "metrics.json")
    monkeypatch.setattr(registry, "current_release", lambda profile, root=None: released)
    spec = validate.load_spec(RETRAIN)
    gate = {s.stage: s for s in plan_cli.steps(spec, {})}["release_gate"]
    assert "compares with release smoke-cpu r0007" in gate.detail
    smoke = {s.stage: s for s in plan_cli.steps(validate.load_spec(SPEC), {})}["release_gate"]
    assert "release smoke-cpu" not in smoke.detail  # the smoke spec does not compare


def test_a_dataset_event_is_refused_for_a_spec_no_event_starts(
        dataset_v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        cli.main(["plan", str(SPEC), "--dataset-event", str(dataset_v2)])
    assert code.value.code == 2
    assert "is a profile spec, which no dataset event starts" in capsys.readouterr().err


def test_a_dataset_event_outside_the_allowed_roots_is_blocked_as_the_task_would(
        dataset_v2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEFTFLOW_ALLOWED_ROOTS")
    spec = validate.load_spec(RETRAIN)
    steps = plan_cli.steps(spec, {}, plan_cli.dataset_event(spec, str(dataset_v2)))
    assert steps[0].action == "blocked" and "outside the allowed roots" in steps[0].detail


def test_a_dataset_event_of_another_dataset_is_refused_as_it_would_not_start_the_dag(
        dataset_v2: Path, tmp_path: Path) -> None:
    from peftflow.errors import ConfigError

    other = tmp_path / "other" / "train.jsonl"
    other.parent.mkdir()
    other.write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        cli.main(["dataset", "register", str(other), "--name", "other-docs", "--version", "v1",
                  "--no-announce"])
    with pytest.raises(ConfigError, match=r"registers dataset 'other-docs', but "
                       r"rwkv7_smoke_retrain is scheduled on peftflow-dataset://pydoc-docs"):
        plan_cli.dataset_event(validate.load_spec(RETRAIN), str(other.with_name(
            "train.manifest.json")))
