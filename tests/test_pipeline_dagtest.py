"""The smoke DAG end to end on CPU with dag.test(logical_date=None), as a triggered run has
no logical date. Real stages: tokeniser, binidx, RWKV-7 LoRA training, rwkv evaluation, gate,
release. (Pools need the real scheduler: see test_live_*.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagtest_support import make_dag_bundle, run_dag_test

pytestmark = pytest.mark.slow

BUNDLE = "pipeline-tests"
STAGE_TASKS = ["prepare_dataset", "train_adapter", "evaluate_adapter"]


@pytest.fixture(scope="module")
def dag_folder(tmp_path_factory: pytest.TempPathFactory, project_root: Path) -> Iterator[Path]:
    """A DAG folder whose specs are the smoke spec and a twin with an unreachable gate."""
    root = tmp_path_factory.mktemp("pipeline")
    smoke = (project_root / "dag_specs" / "rwkv7_smoke_cpu.yaml").read_text()
    patch = make_dag_bundle(root, {
        "pipe_ok.yaml": smoke.replace("dag_id: rwkv7_smoke_cpu", "dag_id: pipe_ok"),
        "pipe_blocked.yaml": smoke.replace("dag_id: rwkv7_smoke_cpu", "dag_id: pipe_blocked")
        .replace("min_loss_improvement: 0.01", "min_loss_improvement: 0.99"),
    }, BUNDLE)
    # experiment tracking switched on, as a user would: every run's summary logs it to MLflow
    patch.setenv("PEFTFLOW_TRACKING", "mlflow")
    patch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    yield root / "dags"
    patch.undo()


def _mlflow_run(run: Any) -> Any:
    """The one MLflow run the run_summary task logged for this Airflow run."""
    import mlflow

    from peftflow import settings

    client = mlflow.MlflowClient(settings.tracking().uri)
    experiment = client.get_experiment_by_name(run.dag_id)
    assert experiment is not None, "no MLflow experiment for this DAG"
    found = client.search_runs([experiment.experiment_id],
                               f"tags.`peftflow.run_id` = '{run.run_id}'")
    assert len(found) == 1, [r.info.run_id for r in found]
    return client, found[0]


def _run(dag_folder: Path, dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    return run_dag_test(dag_folder, BUNDLE, dag_id, conf or {})


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _summary(run: Any) -> dict[str, Any]:
    """run_summary.json that the run_summary teardown wrote for this run."""
    from peftflow import settings
    from peftflow.run import runinfo

    path = (settings.get().artifact_root / run.dag_id / runinfo.safe_segment(run.run_id)
            / "run_summary.json")
    return json.loads(path.read_text())


def _outcomes(summary: dict[str, Any]) -> dict[str, str]:
    return {s["task_id"]: s["outcome"] for s in summary["stages"]}


@pytest.fixture(scope="module")
def ok_run(dag_folder: Path, airflow_db: None, smoke_base_model: Path) -> Any:
    return _run(dag_folder, "pipe_ok", {"note": "pipeline test"})


def test_success_path_releases_with_a_valid_manifest(ok_run: Any) -> None:
    from peftflow.release import registry
    from peftflow.store import schemas

    assert str(ok_run.state) == "success", _states(ok_run)
    release = registry.current_release("smoke-cpu")
    assert release is not None and release.run_id == ok_run.run_id
    manifest = json.loads(release.manifest_path.read_text())
    schemas.check(manifest, "release_manifest", str(release.manifest_path))
    assert manifest["airflow"]["dag_id"] == "pipe_ok"
    assert manifest["gate"]["release"] is True
    assert (release.dir / "report.md").read_text().count("pydoc-domain") >= 1


def test_a_released_run_summarises_every_stage_as_ran_and_names_the_release(
        ok_run: Any) -> None:
    from peftflow.release import registry

    summary = _summary(ok_run)
    version = registry.current_release("smoke-cpu").version
    assert summary["outcome"] == "released"
    assert summary["release"] == f"smoke-cpu {version}"
    assert summary["headline"].startswith(f"Released smoke-cpu {version}")
    assert _outcomes(summary) == {"prepare_dataset": "ran", "train_adapter": "ran",
                                  "evaluate_adapter": "ran", "release_gate": "passed",
                                  "release_adapter": "ran"}
    assert summary["note"] == "pipeline test" and summary["dataset"] == "pydoc-docs v1"
    assert _states(ok_run)["run_summary"] == "success"


def test_success_path_leaves_a_verifiable_audit_trail(ok_run: Any) -> None:
    from peftflow.store import audit, audit_verify

    events = [e for e in audit.events(run_id=ok_run.run_id)]
    kinds = [e["event"] for e in events]
    assert kinds.count("task_succeeded") == 4 and "gate_passed" in kinds
    assert all(e["actor"] for e in events)
    assert audit_verify.verify() == []


def test_adapter_improved_the_domain_loss(ok_run: Any) -> None:
    from peftflow import settings

    run_dir = next((settings.get().artifact_root / "pipe_ok").iterdir())
    metrics = json.loads((run_dir / "evaluate_adapter" / "metrics.json").read_text())
    domain = metrics["suites"]["pydoc-domain"]
    assert domain["adapted_loss"] < domain["base_loss"]


def test_gpu_stages_record_the_device_they_leased_and_cpu_stages_none(ok_run: Any) -> None:
    import socket

    from peftflow import settings
    from peftflow.store import audit

    run_dir = next((settings.get().artifact_root / "pipe_ok").iterdir())
    leases = {stage: json.loads((run_dir / stage / "status.json").read_text()).get("devices")
              for stage in ("prepare_dataset", "train_adapter", "evaluate_adapter")}
    assert leases["prepare_dataset"] is None
    for stage in ("train_adapter", "evaluate_adapter"):
        assert leases[stage]["ids"] == ["0"] and leases[stage]["host"] == socket.gethostname()
    audited = {e["stage"]: e["details"].get("devices") for e in audit.events(
        run_id=ok_run.run_id) if e["event"] == "task_succeeded"}
    assert audited["train_adapter"]["ids"] == ["0"] and audited["prepare_dataset"] is None


def test_unreachable_gate_blocks_the_release_and_records_why(ok_run: Any,
                                                             dag_folder: Path) -> None:
    from peftflow.release import registry
    from peftflow.store import audit

    run = _run(dag_folder, "pipe_blocked")
    states = _states(run)
    assert str(run.state) == "failed"
    assert states["release_gate"] == "failed"
    assert states["release_adapter"] == "upstream_failed"
    blocked = [b for b in registry.list_blocked("smoke-cpu") if b["run_id"] == run.run_id]
    assert blocked, "no blocked record"
    reasons = " ".join(blocked[0]["reasons"])
    assert "0.99" in reasons and "pydoc-domain" in reasons
    events = [e["event"] for e in audit.events(run_id=run.run_id)]
    assert "gate_blocked" in events
    assert registry.current_release("smoke-cpu").run_id == ok_run.run_id  # unchanged
    summary = _summary(run)  # the teardown ran, and the run still failed
    assert states["run_summary"] == "success"
    assert summary["outcome"] == "blocked" and summary["release"] is None
    assert _outcomes(summary)["release_gate"] == "blocked"
    assert _outcomes(summary)["release_adapter"] == "not run"
    assert any("0.99" in r for r in summary["reasons"])


def test_rerun_with_unchanged_inputs_reuses_every_stage(ok_run: Any, dag_folder: Path) -> None:
    from peftflow.release import registry
    from peftflow.store import audit

    before = registry.current_release("smoke-cpu")
    run = _run(dag_folder, "pipe_ok")
    assert str(run.state) == "success"
    events = list(audit.events(run_id=run.run_id))
    reused = {e["stage"] for e in events if e["event"] == "task_reused"}
    assert reused == set(STAGE_TASKS)
    assert not [e for e in events if e["event"] == "task_started"
                and e.get("stage") in STAGE_TASKS]
    after = registry.current_release("smoke-cpu")
    assert after.version == before.version  # the same adapter is never released twice
    summary = _summary(run)
    outcomes = _outcomes(summary)
    assert all(outcomes[t] == "reused" for t in STAGE_TASKS)
    details = {s["task_id"]: s["detail"] for s in summary["stages"]}
    assert all(ok_run.run_id in details[t] for t in STAGE_TASKS)  # where they came from
    assert summary["outcome"] == "already released"
    assert "1 stage(s) ran, 3 reused" in summary["headline"]  # the no-op release
    # in MLflow the rerun links to the run that computed its results instead of copying them
    client, tracked = _mlflow_run(run)
    _, first = _mlflow_run(ok_run)
    assert tracked.data.tags["peftflow.reused.train_adapter"] == first.info.run_id
    assert client.get_metric_history(tracked.info.run_id, "train/loss") == []


def test_a_run_is_in_mlflow_with_its_loss_history_metrics_and_gate_verdict(
        ok_run: Any) -> None:
    from peftflow import settings
    from peftflow.run import runinfo
    from peftflow.store import audit

    client, tracked = _mlflow_run(ok_run)
    run_dir = (settings.get().artifact_root / ok_run.dag_id
               / runinfo.safe_segment(ok_run.run_id))
    losses = [json.loads(line)["loss"] for line in (run_dir / "train_adapter" / "loss_data.jsonl")
              .read_text().splitlines() if line.strip()]
    history = client.get_metric_history(tracked.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(losses)
    metrics = json.loads((run_dir / "evaluate_adapter" / "metrics.json").read_text())["suites"]
    logged = tracked.data.metrics
    for suite in metrics.values():
        assert any(v == pytest.approx(suite["adapted_loss"]) for k, v in logged.items()
                   if k.endswith("/adapted_loss")), logged
    assert tracked.data.tags["peftflow.gate"] == "pass"
    assert tracked.data.tags["peftflow.outcome"] == "released"
    assert [e for e in audit.events(run_id=ok_run.run_id) if e["event"] == "tracking_logged"]


REPORT_STAGE = '''
import argparse, json
from pathlib import Path
from peftflow.store.status_record import StageRecorder

args = argparse.ArgumentParser()
for flag in ("--profile", "--out", "--bin"):
    args.add_argument(flag, required=True)
a = args.parse_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
rec = StageRecorder("token_report", out)
rec.add_input("bin", a.bin)
tokens = Path(a.bin).stat().st_size // 2  # uint16 token ids
(out / "token_report.json").write_text(json.dumps({"tokens": tokens}))
rec.add_output("report", out / "token_report.json")
rec.metrics["tokens"] = tokens
rec.write("success")
'''


def test_a_stage_registered_through_the_table_alone_runs_in_the_dag(
        ok_run: Any, dag_folder: Path, tmp_path: Path) -> None:
    """One StageDef (plus its script) and nothing else: the DAG grows the task in the table's
    place, the plan hands it the upstream record, its status.json is checked like any other."""
    import sys

    from peftflow.run import stages
    from peftflow.run.inputs import upstream_outputs

    (tmp_path / "token_report.py").write_text(REPORT_STAGE)
    script = tmp_path / "token_report.sh"
    script.write_text(f'#!/usr/bin/env bash\nset -euo pipefail\n'
                      f'exec {sys.executable} {tmp_path / "token_report.py"} "$@"\n')

    def args(ctx: stages.StageContext) -> stages.StageArgs:
        data = upstream_outputs(ctx.upstream.get("prepare_dataset"), "prepare_dataset")
        return stages.StageArgs(argv=["--bin", data["bin"].path], inputs={"bin": data["bin"]})

    stages.register(stages.StageDef("token_report", str(script), ("report",), args),
                    after="prepare_dataset")
    try:
        run = _run(dag_folder, "pipe_ok", {"note": "registered stage"})
    finally:
        stages.unregister("token_report")
    states = _states(run)
    assert states["token_report"] == "success", states
    assert states["release_adapter"] == "success", states  # the rest of the chain ran on
    [record] = [ti.xcom_pull(task_ids="token_report") for ti in run.get_task_instances()
                if ti.task_id == "token_report"]
    assert record["metrics"]["tokens"] > 0 and "report" in record["outputs"]
    assert _outcomes(_summary(run))["token_report"] == "ran"


def test_a_tracker_that_is_down_leaves_the_run_successful_and_is_audited(
        ok_run: Any, dag_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracking on, MLflow unreachable (nothing listens on the port): the run still ends as
    its stages decided, and the audit trail says the tracking failed."""
    import socket

    from peftflow.store import audit

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = _run(dag_folder, "pipe_ok", {"note": "tracker down"})
    assert str(run.state) == "success", _states(run)
    assert _states(run)["run_summary"] == "success"
    failed = [e for e in audit.events(run_id=run.run_id) if e["event"] == "tracking_failed"]
    assert len(failed) == 1 and failed[0]["outcome"] == "failed", failed
    assert not [e for e in audit.events(run_id=run.run_id) if e["event"] == "tracking_logged"]
