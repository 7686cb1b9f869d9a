"""`peftflow plan`: the dry run predicts exactly what the tasks will reuse or run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagtest_support import task_context

from operators.stage import StageOperator
from peftflow import cli, plan_cli, validate

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
    assert "prepare_dataset   blocked  inputs rejected: dataset_manifest" in out
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
