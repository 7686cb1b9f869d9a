"""StageOperator contract, as a truth table over what a stage script does.

The scripts are real processes in tmp_path (PEFTFLOW_SCRIPTS_DIR); only Airflow's task
context is a small stand-in, so each row runs in well under a second.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from dagtest_support import task_context

from operators.stage import StageOperator

SPEC = Path(__file__).resolve().parents[1] / "dag_specs" / "rwkv7_smoke_cpu.yaml"

FAKE_STAGE = textwrap.dedent('''
    """A stand-in prepare stage whose behaviour FAKE_MODE chooses."""
    import os, sys, time
    from pathlib import Path
    from peftflow.store.status_record import StageRecorder
    args = sys.argv[1:]
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    mode = os.environ.get("FAKE_MODE", "ok")
    Path(os.environ["FAKE_RUNS"]).open("a").write(mode + "\\n")
    if mode.startswith("exit"):
        sys.exit(int(mode[4:]))
    if mode == "sleep":
        time.sleep(60)
    rec = StageRecorder("prepare_dataset", out)
    names = ["bin", "idx", "quality"]
    if mode == "missing_output_name":
        names = ["bin", "idx"]
    for name in names:
        (out / name).write_text(name * 10)
        rec.add_output(name, out / name)
    if mode == "no_status":
        sys.exit(0)
    rec.write("failed" if mode == "status_failed" else "success")
    if mode == "tamper_after":
        (out / "bin").write_text("changed after hashing")
    if mode == "empty_output":
        (out / "idx").write_text("")
''')


@pytest.fixture()
def fake_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "fake_stage.py").write_text(FAKE_STAGE)
    (scripts / "prepare_dataset.sh").write_text(
        f'#!/usr/bin/env bash\nexec "{sys.executable}" "{scripts}/fake_stage.py" "$@"\n')
    monkeypatch.setenv("PEFTFLOW_SCRIPTS_DIR", str(scripts))
    monkeypatch.setenv("PEFTFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("FAKE_RUNS", str(tmp_path / "runs.log"))
    return tmp_path


def _context(run_id: str = "manual__1", params: dict[str, Any] | None = None) -> dict[str, Any]:
    return task_context("prepare_dataset", "rwkv7_smoke_cpu", run_id, params)


def _operator() -> StageOperator:
    return StageOperator(task_id="prepare_dataset", stage="prepare_dataset",
                         spec_file=str(SPEC))


def _runs(tmp: Path) -> list[str]:
    log = tmp / "runs.log"
    return log.read_text().split() if log.exists() else []


ROWS = [
    # (FAKE_MODE, expected exception or None, message fragment)
    ("ok", None, ""),
    ("no_status", AirflowFailException, "exited 0 but its artifacts are not valid"),
    ("status_failed", AirflowFailException, "says 'failed'"),
    ("missing_output_name", AirflowFailException, "lists no quality output"),
    ("tamper_after", AirflowFailException, "does not match its recorded sha256"),
    ("empty_output", AirflowFailException, "is empty"),
    ("exit2", AirflowFailException, "exited 2 (BAD_CONFIG, permanent)"),
    ("exit3", AirflowFailException, "exited 3 (MISSING_INPUT, permanent)"),
    ("exit4", AirflowFailException, "exited 4 (BAD_DATA, permanent)"),
    ("exit5", AirflowFailException, "exited 5 (INTEGRITY, permanent)"),
    ("exit6", AirflowFailException, "exited 6 (POLICY, permanent)"),
    ("exit1", AirflowException, "exited 1 (UNEXPECTED, retryable)"),
    ("exit75", AirflowException, "exited 75 (RESOURCE, retryable)"),
    ("exit130", AirflowException, "exited 130 (INTERRUPTED, retryable)"),
    ("exit99", AirflowException, "exited 99 (UNEXPECTED, retryable)"),
]


@pytest.mark.parametrize(("mode", "expected", "fragment"), ROWS)
def test_stage_outcome_follows_exit_code_and_artifact_contract(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
        expected: type[Exception] | None, fragment: str) -> None:
    monkeypatch.setenv("FAKE_MODE", mode)
    op = _operator()
    if expected is None:
        record = op.execute(_context())
        assert set(record["outputs"]) == {"bin", "idx", "quality"}
        assert record["reused"] is False
        return
    with pytest.raises(expected, match=re.escape(fragment)) as caught:
        op.execute(_context())
    if expected is AirflowException:
        assert not isinstance(caught.value, AirflowFailException), "must stay retryable"


def test_successful_result_is_reused_without_running_the_script(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    first = _operator().execute(_context("manual__a"))
    monkeypatch.setenv("FAKE_MODE", "exit2")  # would fail if it ran
    second = _operator().execute(_context("manual__b"))
    assert second["reused"] is True and second["outputs"] == first["outputs"]
    assert _runs(fake_scripts) == ["ok"]


def test_reuse_is_refused_when_the_earlier_output_was_changed(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    first = _operator().execute(_context("manual__a"))
    Path(first["outputs"]["bin"]["path"]).write_text("edited")
    second = _operator().execute(_context("manual__b"))
    assert second["reused"] is False
    assert _runs(fake_scripts) == ["ok", "ok"]


def test_audit_trail_records_start_success_and_reuse(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.store import audit, audit_verify

    monkeypatch.setenv("FAKE_MODE", "ok")
    _operator().execute(_context("manual__a", {"note": "first run"}))
    _operator().execute(_context("manual__b"))
    events = list(audit.events(fake_scripts / "audit.jsonl"))
    assert [e["event"] for e in events] == ["task_started", "task_succeeded", "task_reused"]
    assert events[0]["actor"] == "tester" and events[0]["note"] == "first run"
    assert audit_verify.verify(fake_scripts / "audit.jsonl") == []


def test_operator_refuses_to_start_when_mlops_lite_is_active(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = fake_scripts / "orchestration.yaml"
    config.write_text("active_profile: mlops-lite\n")
    monkeypatch.setenv("PEFTFLOW_ORCHESTRATION_CONFIG", str(config))
    monkeypatch.setenv("FAKE_MODE", "ok")
    with pytest.raises(AirflowFailException, match="active orchestration profile is 'mlops-lite'"):
        _operator().execute(_context())
    assert _runs(fake_scripts) == []


def test_trigger_param_outside_the_spec_allow_list_is_rejected_before_running(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    hostile = {"training_profile": "configs/profiles/../../../etc/passwd; rm -rf ~"}
    with pytest.raises(AirflowFailException, match="is not allowed by"):
        _operator().execute(_context(params=hostile))
    assert _runs(fake_scripts) == []


def test_on_kill_terminates_the_whole_process_group(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's python child must die with it: the group is signalled, not just bash."""
    import threading

    monkeypatch.setenv("FAKE_MODE", "sleep")
    op = _operator()
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(errors, op.execute, _context()))
    worker.start()
    deadline = time.monotonic() + 20
    while op._child is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert op._child is not None
    pgid = op._child.pid
    time.sleep(0.5)
    op.on_kill()
    worker.join(timeout=30)
    assert not worker.is_alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert errors and isinstance(errors[0], AirflowException)


def _capture(errors: list[BaseException], fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except BaseException as exc:
        errors.append(exc)


def test_stage_environment_carries_no_airflow_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow import settings

    for name in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_WAREHOUSE",
                 "AIRFLOW_VAR_TOKEN", "PEFTFLOW_DB_URL", "PEFTFLOW_API_PASSWORD"):
        monkeypatch.setenv(name, "postgresql://u:S3cr3tPW@h/db")
    env = settings.child_env({"PEFTFLOW_RUN_ID": "r"})
    assert "S3cr3tPW" not in " ".join(env.values())
    assert env["PEFTFLOW_RUN_ID"] == "r"


def test_a_retry_stops_the_stage_an_earlier_try_left_running(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Try 1's watcher died (worker lost) but its stage runs on: try 2 stops it first."""
    import subprocess

    from peftflow.run import lease
    from peftflow.store import audit, audit_verify

    monkeypatch.setenv("FAKE_MODE", "exit1")
    with pytest.raises(AirflowException):
        _operator().execute(_context("manual__orphan"))
    (out_dir,) = (fake_scripts / "artifacts").rglob("prepare_dataset")
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                              start_new_session=True)
    try:
        lease.write(out_dir, orphan.pid, try_number=1)
        monkeypatch.setenv("FAKE_MODE", "ok")
        context = _context("manual__orphan")
        context["ti"].try_number = 2
        assert _operator().execute(context)["reused"] is False
        assert orphan.wait(timeout=10) < 0
        assert not (out_dir / lease.LEASE_FILE).exists()
    finally:
        orphan.kill()
    events = list(audit.events(fake_scripts / "audit.jsonl"))
    stopped = [e for e in events if e["event"] == "orphan_stopped"]
    assert len(stopped) == 1 and stopped[0]["details"] == {"pid": orphan.pid, "try_number": 1}
    assert audit_verify.verify(fake_scripts / "audit.jsonl") == []


def test_an_unknown_conf_key_fails_the_first_task_before_running(
        fake_scripts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow validates declared params only: a typo like force-rerun would pass silently."""
    monkeypatch.setenv("FAKE_MODE", "ok")
    with pytest.raises(AirflowFailException, match=r"unknown trigger param\(s\) 'force-rerun'"):
        _operator().execute(_context(params={"force-rerun": True}))
    assert _runs(fake_scripts) == []


def test_an_override_without_a_reason_is_refused_where_overrides_are_allowed() -> None:
    import dataclasses

    from peftflow.airflow import taskrun
    from peftflow.errors import ConfigError
    from peftflow.spec import validate

    spec = validate.load_spec(SPEC)
    allowing = dataclasses.replace(spec, gate=dataclasses.replace(spec.gate,
                                                                  allow_override=True))
    with pytest.raises(ConfigError, match="without an override_reason"):
        taskrun.check_params(allowing, {"override_gate": True, "override_reason": "  "})
    taskrun.check_params(allowing, {"override_gate": True, "override_reason": "hotfix"})
