"""MLflow tracking (peftflow.track) against real MLflow stores, from real stage outputs.

One SQLite store per module holds the first run, logged once: the tests read it, log a second
run that reused the first run's results, and call again for the same run. A tracker that is
down, a missing client and a bad setting each give a failed result, never an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_release import Run, make_run  # the stage outputs a real release is built from

from peftflow import settings, track
from peftflow.airflow import runsummary
from peftflow.errors import ConfigError
from peftflow.release import gate
from peftflow.run import plan
from peftflow.run import reuse as cache
from peftflow.store import audit
from peftflow.store import status_record as status
from peftflow.store.status_record import StageRecorder

# The tests that read a store need the client (pip install .[mlflow]); the others do not.
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="the MLflow client is an optional extra: "
                                         "pip install .[mlflow]")

DAG = "rwkv7_smoke_cpu"
FIRST = "manual__2026-11-27T12:00:00"  # the run id make_run's release records
SECOND = "manual__2026-11-28T09:00:00+00:00_reuse"
LOSSES = [round(11.25 - 0.0125 * i + (0.03 if i % 7 == 0 else 0.0), 6) for i in range(50)]
PASSWORD = "s3cr3t-Pa55word"
STAGES = ("prepare_dataset", "train_adapter", "evaluate_adapter")
Records = dict[str, dict[str, Any] | None]


def _key(stage: str, salt: str = "") -> str:
    return hashlib.sha256(f"{stage}{salt}".encode()).hexdigest()


def _with_loss_data(run: Run) -> None:
    """Give the train stage what a real training writes: loss_data.jsonl, one step a line."""
    lines = [json.dumps({"loss": v, "t_cost": 0.5, "kt_s": 1.0}) for v in LOSSES]
    (run.train / "loss_data.jsonl").write_text("\n".join(lines) + "\n")
    rec = StageRecorder("train_adapter", run.train)
    rec.add_input("profile", run.profile)
    rec.add_input("base_model", run.base)
    for name, file in (("adapter", "rwkv-1.pth"), ("loss_data", "loss_data.jsonl"),
                       ("loss_curve", "loss_curve.png")):
        rec.add_output(name, run.train / file)
    rec.metrics.update({"final_loss": LOSSES[-1], "steps": len(LOSSES),
                        "profile_sha256": rec.inputs[0].sha256})
    rec.write("success")


def _record(folder: Path, key: str) -> dict[str, Any]:
    return plan.record(status.read(folder), folder / status.STATUS_FILE, key, reused=False)


def _summary(run_id: str, records: Records, how: str) -> dict[str, Any]:
    kind = "task_reused" if how == "reused" else "task_succeeded"
    events = [{"task_id": t, "event": kind, "duration_s": 1.0} for t in STAGES]
    events += [{"task_id": "release_gate", "event": "gate_passed"},
               {"task_id": "release_adapter", "event": "task_succeeded", "duration_s": 0.5}]
    return runsummary.build(dag_id=DAG, run_id=run_id, actor="alice", note="", events=events,
                            records=records, states={}).as_dict()


@dataclasses.dataclass
class Scene:
    first: Run
    records: Records  # the first run: every stage ran
    reused: Records  # the second run: prepare, train and evaluate reused from the first
    store: Path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    tmp = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTFLOW_ARTIFACT_ROOT", str(tmp / "artifacts"))
        mp.setenv("PEFTFLOW_RELEASES_ROOT", str(tmp / "releases"))
        mp.setenv("PEFTFLOW_MODELS_ROOT", str(tmp / "models"))
        first = make_run(tmp)
        _with_loss_data(first)
        done = first.release(FIRST)
        assert done.returncode == 0, done.stderr
        records: Records = {t: _record(getattr(first, t.split("_")[0]), _key(t))
                            for t in STAGES}
        records["release_gate"] = {"decision_path": str(first.gate_file), "release": True,
                                   "overridden": False}
        records["release_adapter"] = _record(first.out, _key("release_adapter"))
        # the second run, as taskrun reuses: the cache entry the first run stored
        reused: Records = {}
        for stage in STAGES:
            cache.store(stage, _key(stage), getattr(first, stage.split("_")[0]) / "status.json",
                        FIRST)
            earlier = cache.lookup(stage, _key(stage))
            assert earlier is not None
            reused[stage] = plan.record(earlier, Path(earlier["_status_path"]), _key(stage),
                                        reused=True)
        second = dataclasses.replace(first, out=tmp / "run2" / "release_adapter",
                                     gate_file=tmp / "run2" / "release_gate" / "gate.json")
        gate.write_decision(gate.decide(first.prepare / "quality.json",
                                        first.evaluate / "verdict.json", allow_warn=True),
                            second.gate_file)
        done = second.release(SECOND)
        assert done.returncode == 0 and "already released" in done.stdout, done.stderr
        reused["release_gate"] = {"decision_path": str(second.gate_file), "release": True,
                                  "overridden": False}
        reused["release_adapter"] = _record(second.out, _key("release_adapter", "2"))
        yield Scene(first, records, reused, tmp / "mlflow-store")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test its own audit log; MLflow's variables that tracking sets are undone."""
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(tmp_path / "audit" / "audit.jsonl"))
    for name in ("PEFTFLOW_TRACKING", "PEFTFLOW_MLFLOW_TRACKING_URI",
                 "PEFTFLOW_MLFLOW_EXPERIMENT", "PEFTFLOW_MLFLOW_LOG_ADAPTER",
                 "PEFTFLOW_MLFLOW_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    before = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[name]
    os.environ.update(before)


def _uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _use(monkeypatch: pytest.MonkeyPatch, uri: str) -> Any:
    """Switch tracking on with this store; a client of it to read what was logged."""
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", uri)
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _log(run_id: str, records: Records, how: str = "ran", dag: str = DAG) -> track.TrackResult:
    params = {"training_profile": "configs/profiles/smoke_cpu.yaml",
              "dataset_manifest": "data/smoke/pydoc-docs/v1/train.manifest.json",
              "force_rerun": False, "note": "tracking test"}
    return track.log_run(dag_id=dag, run_id=run_id, records=records,
                         summary=_summary(run_id, records, how), params=params,
                         task_id="run_summary")


def _runs(client: Any, run_id: str, dag: str = DAG) -> list[Any]:
    exp = client.get_experiment_by_name(dag)
    return list(client.search_runs([exp.experiment_id],
                                   filter_string=f"tags.`peftflow.run_id` = '{run_id}'"))


def _history(client: Any, mlflow_run: str, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(mlflow_run, name)]


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    return list(audit.events(tmp_path / "audit" / "audit.jsonl"))


def _module_audit(scene: Scene) -> Path:
    return scene.store.parent / "tracking-audit" / "audit.jsonl"


@pytest.fixture(scope="module")
def first_logged(scene: Scene) -> track.TrackResult:
    with pytest.MonkeyPatch.context() as mp:
        _use(mp, _uri(scene.store))
        mp.setenv("PEFTFLOW_AUDIT_LOG", str(_module_audit(scene)))
        return _log(FIRST, scene.records)


@needs_mlflow
def test_a_run_is_logged_with_its_params_loss_history_eval_metrics_gate_and_links(
        scene: Scene, first_logged: track.TrackResult, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(scene.store))
    assert first_logged.status is track.TrackStatus.LOGGED, first_logged.message
    (found,) = _runs(client, FIRST)
    assert found.info.run_id == first_logged.mlflow_run_id and found.info.run_name == FIRST
    assert found.info.status == "FINISHED"
    assert _history(client, found.info.run_id, "train/loss") == list(enumerate(LOSSES))
    suites = json.loads((scene.first.evaluate / "metrics.json").read_text())["suites"]
    for suite, row in suites.items():
        for name in ("base_loss", "adapted_loss", "relative_change"):
            assert found.data.metrics[f"eval/{suite}/{name}"] == row[name]
        assert found.data.metrics[f"eval/{suite}/ci95_low"] == row["ci95"][0]
        assert found.data.metrics[f"eval/{suite}/ci95_high"] == row["ci95"][1]
    params, tags = found.data.params, found.data.tags
    assert params["profile"] == "smoke-cpu" and params["dataset_version"] == "v1"
    assert params["profile_sha256"] == status.read(scene.first.train)["inputs"][0]["sha256"]
    assert params["cache_key.train_adapter"] == _key("train_adapter")
    assert tags["peftflow.dag_id"] == DAG and tags["peftflow.gate"] == "pass"
    assert tags["peftflow.outcome"] == "released" and tags["peftflow.release"] == "smoke-cpu r0001"
    release = scene.first.releases / "smoke-cpu" / "r0001"
    assert tags["peftflow.link.release_dir"] == str(release)
    assert tags["peftflow.link.release_manifest"] == str(release / "release_manifest.json")
    assert tags["peftflow.link.train_adapter"] == str(scene.first.train)
    assert not client.list_artifacts(found.info.run_id)  # links only: no adapter copied
    (event,) = audit.events(_module_audit(scene))
    assert event["event"] == "tracking_logged" and event["run_id"] == FIRST
    assert event["details"]["mlflow_run_id"] == found.info.run_id


@needs_mlflow
def test_a_second_call_for_the_same_run_keeps_one_mlflow_run(
        scene: Scene, first_logged: track.TrackResult, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(scene.store))
    again = _log(FIRST, scene.records)
    assert again.status is track.TrackStatus.LOGGED and "already logged" in again.message
    assert again.mlflow_run_id == first_logged.mlflow_run_id
    (found,) = _runs(client, FIRST)
    assert len(client.get_metric_history(found.info.run_id, "train/loss")) == len(LOSSES)


@needs_mlflow
def test_a_run_cleared_and_run_again_gets_a_new_mlflow_run_and_the_old_one_stays_for_links(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(scene.store))
    before = _log("manual__cleared", scene.records)
    rerun = {**scene.records, "release_adapter": None}  # this time it stopped at the gate
    after = _log("manual__cleared", rerun)
    assert after.status is track.TrackStatus.LOGGED and after.mlflow_run_id != before.mlflow_run_id
    (current,) = [r for r in _runs(client, "manual__cleared") if "peftflow.key" in r.data.tags]
    assert current.info.run_id == after.mlflow_run_id
    old = client.get_run(before.mlflow_run_id)
    assert old.data.tags["peftflow.superseded"] == "true" and old.info.lifecycle_stage == "active"


@needs_mlflow
def test_a_run_that_reused_every_result_links_to_the_run_that_computed_them(
        scene: Scene, first_logged: track.TrackResult, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(scene.store))
    second = _log(SECOND, scene.reused, how="reused")
    assert second.status is track.TrackStatus.LINKED, second.message
    (found,) = _runs(client, SECOND)
    tags = found.data.tags
    for stage in STAGES:
        assert tags[f"peftflow.reused.{stage}"] == first_logged.mlflow_run_id
        assert tags[f"peftflow.reused.{stage}.airflow_run_id"] == FIRST
    assert client.get_metric_history(found.info.run_id, "train/loss") == []
    assert not [m for m in found.data.metrics if m.startswith("eval/")]
    assert tags["peftflow.outcome"] == "already released" and tags["peftflow.gate"] == "pass"
    assert len(_history(client, first_logged.mlflow_run_id, "train/loss")) == len(LOSSES)


@needs_mlflow
def test_a_result_reused_from_an_untracked_run_is_logged_once_then_linked(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(tmp_path))
    never = {t: (None if r is None else {**r, "reused": True, "reused_from": "manual__old"})
             for t, r in scene.reused.items()}
    third = _log("manual__third", never, how="reused")
    assert third.status is track.TrackStatus.LOGGED and "never tracked" in third.message
    (held,) = _runs(client, "manual__third")
    assert held.data.tags["peftflow.reused.train_adapter"] == "untracked"
    assert _history(client, held.info.run_id, "train/loss") == list(enumerate(LOSSES))
    fourth = _log("manual__fourth", never, how="reused")
    assert fourth.status is track.TrackStatus.LINKED, fourth.message
    (linked,) = _runs(client, "manual__fourth")
    assert linked.data.tags["peftflow.reused.train_adapter"] == held.info.run_id
    assert client.get_metric_history(linked.info.run_id, "train/loss") == []


@needs_mlflow
def test_the_adapter_is_copied_into_mlflow_only_when_asked(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(tmp_path))
    monkeypatch.setenv("PEFTFLOW_MLFLOW_LOG_ADAPTER", "yes")
    result = _log(FIRST, scene.records)
    assert result.status is track.TrackStatus.LOGGED, result.message
    assert [a.path for a in client.list_artifacts(result.mlflow_run_id, "adapter")] == \
        ["adapter/rwkv-1.pth"]
    assert (tmp_path / "artifacts").is_dir()  # beside the SQLite DB, not ./mlruns


@needs_mlflow
def test_a_file_store_works_when_it_is_the_configured_store(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", uri)
    result = _log(FIRST, scene.records)
    assert result.status is track.TrackStatus.LOGGED, result.message
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # set because it is the store
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    assert _history(client, result.mlflow_run_id, "train/loss") == list(enumerate(LOSSES))


@needs_mlflow
def test_a_blocked_run_carries_the_gate_verdict_and_its_reasons(
        scene: Scene, first_logged: track.TrackResult, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _use(monkeypatch, _uri(scene.store))
    reason = "max_retention_increase on suite 'lambada': measured 0.0129, required <= 0.001"
    records: Records = {**scene.records, "release_gate": None, "release_adapter": None}
    events = [{"task_id": t, "event": "task_succeeded", "duration_s": 1.0} for t in STAGES]
    events.append({"task_id": "release_gate", "event": "gate_blocked",
                   "details": {"reasons": [reason]}})
    summary = runsummary.build(dag_id=DAG, run_id="manual__blocked", actor="alice", note="",
                               events=events, records=records, states={}).as_dict()
    result = track.log_run(dag_id=DAG, run_id="manual__blocked", records=records,
                           summary=summary, params={})
    assert result.status is track.TrackStatus.LOGGED, result.message
    (found,) = _runs(client, "manual__blocked")
    assert found.info.status == "FAILED" and found.data.tags["peftflow.outcome"] == "blocked"
    assert found.data.tags["peftflow.gate"] == "blocked"
    assert found.data.tags["peftflow.gate.reasons"] == reason
    assert "peftflow.link.release_dir" not in found.data.tags


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@needs_mlflow
def test_a_tracker_that_is_down_fails_fast_and_the_run_still_succeeds(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's default retries would take minutes; tracking bounds them (about 3 s)."""
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.monotonic()
    result = _log(FIRST, scene.records)
    assert time.monotonic() - t0 < 10
    assert result.status is track.TrackStatus.FAILED and result.mlflow_run_id is None
    assert "not tracked at http://127.0.0.1" in result.message
    assert "Max retries exceeded" in result.message
    (event,) = _events(tmp_path)
    assert event["event"] == "tracking_failed" and event["outcome"] == "failed"


@needs_mlflow
def test_an_unwritable_sqlite_store_fails_without_an_exception(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", _uri(tmp_path / "a-file"))
    result = _log(FIRST, scene.records)
    assert result.status is track.TrackStatus.FAILED
    assert "FileExistsError" in result.message and "a-file" in result.message


@needs_mlflow
def test_a_password_in_the_tracking_uri_is_never_shown(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own setting wins
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI",
                       f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}/mlflow")
    with caplog.at_level("DEBUG"):
        result = _log(FIRST, scene.records)
    assert result.status is track.TrackStatus.FAILED
    assert result.tracking_uri is not None and result.tracking_uri.startswith("http://alice:***@")
    assert PASSWORD not in repr(result) and PASSWORD not in caplog.text
    assert PASSWORD not in (tmp_path / "audit" / "audit.jsonl").read_text()
    assert "alice:***@127.0.0.1" in _events(tmp_path)[0]["details"]["tracking_uri"]


def test_tracking_off_logs_nothing_and_never_imports_mlflow(scene: Scene) -> None:
    code = ("import json, sys; from peftflow import track; "
            "r = track.log_run(dag_id='d', run_id='r', records=json.loads(sys.argv[1]), "
            "summary={'outcome': 'released'}, params={}); "
            "print(r.status, 'mlflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PEFTFLOW_TRACKING", "PEFTFLOW_MLFLOW_TRACKING_URI")}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(scene.records)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["off", "False"], done.stderr


def test_without_the_mlflow_client_the_message_says_how_to_install_it(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees uninstalled
    result = _log(FIRST, scene.records)
    assert result.status is track.TrackStatus.FAILED
    assert "pip install .[mlflow]" in result.message


def test_a_bad_tracking_setting_is_an_error_naming_the_variable_and_the_choices(
        scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlfow")
    with pytest.raises(ConfigError, match=r"PEFTFLOW_TRACKING='mlfow' is not one of off, mlflow"):
        settings.tracking()
    result = _log(FIRST, scene.records)  # the teardown gets a result, not the exception
    assert result.status is track.TrackStatus.FAILED and "PEFTFLOW_TRACKING" in result.message
    assert _events(tmp_path)[0]["event"] == "tracking_failed"
    monkeypatch.setenv("PEFTFLOW_TRACKING", "mlflow")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_LOG_ADAPTER", "maybe")
    with pytest.raises(ConfigError, match=r"PEFTFLOW_MLFLOW_LOG_ADAPTER='maybe' is not a yes/no"):
        settings.tracking()


def test_tracking_defaults_to_an_sqlite_store_in_the_project_when_switched_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings.tracking().tracker is settings.Tracker.OFF
    monkeypatch.setenv("PEFTFLOW_TRACKING", "MLflow")
    cfg = settings.tracking()
    root = settings.get().project_root
    assert cfg.uri == f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    assert cfg.artifact_root == root / "mlflow" / "artifacts" and cfg.experiment is None
    monkeypatch.delenv("PEFTFLOW_TRACKING")
    monkeypatch.setenv("PEFTFLOW_MLFLOW_TRACKING_URI", "https://mlflow.example.org")
    assert settings.tracking().tracker is settings.Tracker.MLFLOW  # a URI alone switches it on
    assert settings.tracking().artifact_root is None  # the server decides
    assert "PEFTFLOW_MLFLOW_TRACKING_URI" not in settings.child_env({})
