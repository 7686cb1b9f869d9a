"""Notifications in-process: the DAG config a notify section expands to, the messages built
from a run's records, and delivery through the providers' notifiers to real loopback
receivers (aiosmtpd, an HTTP webhook), including receivers that are down."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import receivers as rx

from peftflow.airflow import expand, loader, runsummary
from peftflow.notify import deliver, message, overdue
from peftflow.spec import validate
from peftflow.spec.model import ChannelType, Notify, NotifyChannel, NotifyEvent, Spec
from peftflow.store import audit

FIXTURES = Path(__file__).parent / "fixtures" / "specs"
ALL = frozenset(NotifyEvent)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def notify_spec() -> Spec:
    return validate.load_spec(FIXTURES / "valid" / "notify.yaml")


@pytest.fixture()
def loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[rx.SmtpReceiver,
                                                               rx.WebhookReceiver]]:
    """Both receivers up, and the four connections (two pointing where nothing listens)."""
    ports = [_free_port() for _ in range(4)]
    for conn_id, doc in rx.connections(*ports).items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", doc)
    smtp, hook = rx.SmtpReceiver(ports[0]).start(), rx.WebhookReceiver(ports[1]).start()
    try:
        yield smtp, hook
    finally:
        smtp.stop()
        hook.stop()


def _with_channels(spec: Spec, smtp: str = rx.SMTP_CONN, slack: str = rx.SLACK_CONN,
                   slack_events: frozenset[NotifyEvent] = ALL) -> Spec:
    return dataclasses.replace(spec, notify=Notify((
        NotifyChannel(ChannelType.EMAIL, smtp, ALL, ("team@example.com",)),
        NotifyChannel(ChannelType.SLACK, slack, slack_events)), 60))


def _metrics(tmp_path: Path) -> dict[str, Any]:
    doc = {"suites": {
        "pydoc-domain": {"kind": "domain", "base_loss": 11.2212, "adapted_loss": 10.6986,
                         "relative_change": -0.04657, "ci95": [-0.05118, -0.04225]},
        "lambada-retention": {"kind": "retention", "base_loss": 11.2079,
                              "adapted_loss": 10.8394, "relative_change": -0.03288,
                              "ci95": [-0.03665, -0.02933]}}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    return {"stage": "evaluate_adapter", "outputs": {"metrics": {"path": str(path)}}}


def _decision(tmp_path: Path, release: bool, reasons: list[str]) -> Path:
    path = tmp_path / "gate_decision.json"
    path.write_text(json.dumps({"release": release, "reasons": reasons, "overridden": False,
                                "eval_rules": [
        {"rule": "min_domain_improvement", "suite": "pydoc-domain", "comparison": ">=",
         "threshold": 0.5 if reasons else 0.01, "value": 0.0466,
         "outcome": "fail" if reasons else "pass"}]}))
    return path


def _summary(events: list[dict[str, Any]], records: dict[str, Any],
             note: str = "why this run") -> runsummary.RunSummary:
    return runsummary.build(dag_id="fixture_notify", run_id="manual__r1", actor="alice",
                            note=note, events=events, records=records, states={})


def _released(tmp_path: Path) -> tuple[runsummary.RunSummary, dict[str, Any], Path]:
    records = {"evaluate_adapter": _metrics(tmp_path),
               "prepare_dataset": {"metrics": {"dataset_name": "pydoc-docs",
                                               "dataset_version": "v1"}},
               "release_adapter": {"metrics": {"profile": "smoke-cpu", "version": "r0007",
                                               "release_dir": "/rel/smoke-cpu/r0007"},
                                   "outputs": {"release_manifest": {
                                       "path": "/rel/smoke-cpu/r0007/release_manifest.json"}}}}
    events = [{"event": "gate_passed", "task_id": "release_gate"},
              {"event": "task_succeeded", "task_id": "release_adapter"}]
    return _summary(events, records), records, _decision(tmp_path, True, [])


def test_the_release_task_has_the_asset_alias_and_the_summary_its_spec(
        notify_spec: Spec) -> None:
    from airflow.sdk import AssetAlias

    config = expand.dag_config(notify_spec)[notify_spec.dag_id]
    assert config["tasks"]["release_adapter"]["outlets"] == [
        {"__type__": "airflow.sdk.AssetAlias", "name": expand.RELEASE_ALIAS}]
    assert config["tasks"]["run_summary"]["spec_file"] == str(notify_spec.path)
    built: dict[str, Any] = {}
    loader._build(expand.dag_config(notify_spec), built)
    assert built[notify_spec.dag_id].task_dict["release_adapter"].outlets == [
        AssetAlias(expand.RELEASE_ALIAS)]


def test_a_release_message_names_the_version_the_metrics_that_passed_and_where_it_is(
        notify_spec: Spec, tmp_path: Path) -> None:
    summary, records, decision = _released(tmp_path)
    msg = message.outcome_message(notify_spec, summary, records, [], decision)
    assert msg.event is NotifyEvent.RELEASED
    assert msg.title == "[peftflow] fixture_notify: released smoke-cpu r0007"
    body = msg.body
    assert "  pydoc-domain (domain): loss 11.2212 -> 10.6986, change -4.66% (95% CI -5.12% " \
           ".. -4.23%); gate min_domain_improvement >= 0.01: pass" in body, body
    assert "lambada-retention (retention): loss 11.2079 -> 10.8394" in body
    assert "Release folder: /rel/smoke-cpu/r0007" in body
    assert "Manifest: /rel/smoke-cpu/r0007/release_manifest.json" in body
    assert "Dataset: pydoc-docs v1." in body and "Triggered by alice: why this run" in body
    assert "/dags/fixture_notify/runs/manual__r1" in body


def test_a_blocked_message_lists_the_gates_reasons_and_does_not_say_failed(
        notify_spec: Spec, tmp_path: Path) -> None:
    reason = "min_domain_improvement on suite 'pydoc-domain': 0.0466 is below 0.5"
    events = [{"event": "gate_blocked", "task_id": "release_gate",
               "details": {"reasons": [reason]}}]
    summary = _summary(events, {"evaluate_adapter": _metrics(tmp_path)})
    msg = message.outcome_message(notify_spec, summary, {"evaluate_adapter": _metrics(tmp_path)},
                                  events, _decision(tmp_path, False, [reason]))
    assert msg.event is NotifyEvent.RELEASE_BLOCKED
    assert f"  - {reason}" in msg.body and "gate min_domain_improvement >= 0.5: fail" in msg.body
    assert "fail" not in msg.title and "/tasks/release_gate" in msg.body


def test_a_failure_on_the_last_try_is_retries_exhausted_which_run_failed_channels_get(
        notify_spec: Spec, tmp_path: Path) -> None:
    tries = notify_spec.retry_policy("train_adapter").retries + 1
    events = [{"event": "task_failed", "task_id": "train_adapter", "try_number": n,
               "details": {"exit_code": 75, "class": "RESOURCE",
                           "output_tail": ["loading model", "torch.OutOfMemoryError: CUDA out "
                                           "of memory"]}} for n in range(1, tries + 1)]
    summary = _summary(events, {}, note="")
    msg = message.outcome_message(notify_spec, summary, {}, events, tmp_path / "none.json")
    assert msg.event is NotifyEvent.RETRIES_EXHAUSTED
    assert f"train_adapter retries exhausted: failed on try {tries} of {tries}." in msg.body
    assert "exit 75 (RESOURCE)" in msg.body and "/tasks/train_adapter" in msg.body
    assert "  last output:\n    loading model\n    torch.OutOfMemoryError: CUDA out of memory" \
        in msg.body, msg.body
    only_failed = NotifyChannel(ChannelType.SLACK, "x", frozenset({NotifyEvent.RUN_FAILED}))
    only_exhausted = NotifyChannel(ChannelType.SLACK, "x",
                                   frozenset({NotifyEvent.RETRIES_EXHAUSTED}))
    assert only_failed.wants(msg.event) and only_exhausted.wants(msg.event)
    assert not only_exhausted.wants(NotifyEvent.RUN_FAILED)


def test_a_permanent_failure_says_it_was_not_retried(notify_spec: Spec, tmp_path: Path) -> None:
    events = [{"event": "task_failed", "task_id": "prepare_dataset", "try_number": 1,
               "details": {"error": "data breaks the rules: 3 invalid lines\nline 2: not JSON"}}]
    msg = message.outcome_message(notify_spec, _summary(events, {}), {}, events,
                                  tmp_path / "none.json")
    assert msg.event is NotifyEvent.RUN_FAILED
    assert "(a permanent failure is not retried)" in msg.body
    assert "  data breaks the rules: 3 invalid lines\n  line 2: not JSON" in msg.body


def test_one_message_reaches_the_smtp_server_and_the_webhook_once_per_key(
        notify_spec: Spec, tmp_path: Path,
        loopback: tuple[rx.SmtpReceiver, rx.WebhookReceiver]) -> None:
    smtp, hook = loopback
    summary, records, decision = _released(tmp_path)
    spec = _with_channels(notify_spec)
    msg = message.outcome_message(spec, summary, records, [], decision)
    first = deliver.send(spec, msg, run_dir=tmp_path / "run", once="outcome.1", context={},
                         task_id="run_summary")
    again = deliver.send(spec, msg, run_dir=tmp_path / "run", once="outcome.1", context={},
                         task_id="run_summary")
    assert [d.sent for d in first] == [True, True] and again == []
    assert len(smtp.mails) == 1 and len(hook.posts) == 1
    mail = smtp.mails[0]
    assert mail.subject == msg.title and mail.recipients == ["team@example.com"]
    assert mail.text.startswith("<pre")  # HTML, the text escaped for it
    assert "pydoc-domain (domain): loss 11.2212 -> 10.6986" in mail.plain
    path, post = hook.posts[0]
    assert path == f"/services/{rx.WEBHOOK_TOKEN}"
    assert post["text"].startswith(f"*{msg.title}*\n") and "-&gt; 10.6986" in post["text"]
    assert "-> 10.6986" in hook.texts()[0]
    sent = [e for e in audit.events(run_id="manual__r1") if e["event"] == "notification_sent"]
    assert {e["details"]["channel"] for e in sent} >= {"email", "slack"}
    claim = json.loads((tmp_path / "run" / "notifications" / "outcome.1.json").read_text())
    assert [d["sent"] for d in claim["deliveries"]] == [True, True]


def test_user_text_is_sent_as_written_not_rendered_as_a_template(
        notify_spec: Spec, tmp_path: Path,
        loopback: tuple[rx.SmtpReceiver, rx.WebhookReceiver]) -> None:
    _, hook = loopback
    _, records, decision = _released(tmp_path)
    summary = _summary([{"event": "task_succeeded", "task_id": "release_adapter"}], records,
                       note="{{ 7 * 7 }} <b>&")
    spec = _with_channels(notify_spec)
    msg = message.outcome_message(spec, summary, records, [], decision)
    deliver.send(spec, msg, run_dir=tmp_path / "run", once="outcome.1", context={},
                 task_id="run_summary")
    assert "{{ 7 * 7 }} &lt;b&gt;&amp;" in hook.posts[0][1]["text"]
    assert "{{ 7 * 7 }} <b>&" in hook.texts()[0]


def test_receivers_that_are_down_are_a_failed_delivery_audited_never_an_exception(
        notify_spec: Spec, tmp_path: Path,
        loopback: tuple[rx.SmtpReceiver, rx.WebhookReceiver]) -> None:
    summary, records, decision = _released(tmp_path)
    spec = _with_channels(notify_spec, rx.DOWN_SMTP_CONN, rx.DOWN_SLACK_CONN)
    msg = message.outcome_message(spec, summary, records, [], decision)
    t0 = time.monotonic()
    results = deliver.send(spec, msg, run_dir=tmp_path / "run", once="outcome.1", context={},
                           task_id="run_summary")
    assert time.monotonic() - t0 < 10
    assert [d.sent for d in results] == [False, False]
    assert all("Connection refused" in d.error or "Errno 111" in d.error for d in results), \
        results
    failed = [e for e in audit.events(run_id="manual__r1") if e["event"] ==
              "notification_failed" and e["details"]["connection"] in
              (rx.DOWN_SMTP_CONN, rx.DOWN_SLACK_CONN)]
    assert len(failed) >= 2
    assert rx.WEBHOOK_TOKEN not in json.dumps(failed)
    assert "<url>" not in json.dumps(failed) or "127.0.0.1" not in json.dumps(failed)


def test_an_undefined_connection_is_a_failed_delivery_that_names_it(
        notify_spec: Spec, tmp_path: Path) -> None:
    summary, records, decision = _released(tmp_path)
    spec = _with_channels(notify_spec, "no_such_smtp", "no_such_hook")
    msg = message.outcome_message(spec, summary, records, [], decision)
    results = deliver.send(spec, msg, run_dir=tmp_path / "run", once="o", context={},
                           task_id="run_summary")
    assert [d.sent for d in results] == [False, False]
    assert "no_such_hook" in results[1].error and "isn't defined" in results[1].error


class _Run:
    """The part of Airflow's DagRun the watch reads."""

    def __init__(self, start: datetime) -> None:
        self.start_date = start


def test_the_training_watch_sends_once_past_the_deadline_and_not_before(
        notify_spec: Spec, tmp_path: Path,
        loopback: tuple[rx.SmtpReceiver, rx.WebhookReceiver]) -> None:
    _, hook = loopback
    spec = _with_channels(notify_spec, slack_events=frozenset({NotifyEvent.TRAINING_OVERDUE}))
    now = datetime.now(UTC)

    def watch(started: datetime, run_id: str) -> Any:
        tick = overdue.watch(spec, dag_id=spec.dag_id, run_id=run_id, try_number=2,
                             run_dir=tmp_path / run_id, context={"dag_run": _Run(started)},
                             task_log=None)
        assert tick is not None
        return tick

    early = watch(now, "manual__fresh")  # 60 s allowed, just started
    late = watch(now - timedelta(seconds=90), "manual__slow")
    for _ in range(3):
        early()
        late()
    texts = hook.texts()
    assert len(texts) == 1, texts
    assert f"train_adapter of DAG {spec.dag_id}, run manual__slow is not done: running (try 2)" \
        ", 90 s into the run." in texts[0], texts[0]
    assert "training_overdue_after_s: 60" in texts[0] and " UTC; training should have " \
        "finished by " in texts[0]
    watch(now - timedelta(seconds=90), "manual__slow")()  # its retry: already told
    assert len(hook.texts()) == 1


def test_no_watch_without_a_deadline_or_a_channel_that_hears_it(notify_spec: Spec) -> None:
    plain = validate.load_spec(FIXTURES / "valid" / "minimal.yaml")
    args: dict[str, Any] = {"dag_id": "d", "run_id": "r", "try_number": 1,
                            "run_dir": Path("/x"), "context": {}, "task_log": None}
    assert overdue.watch(plain, **args) is None
    deaf = dataclasses.replace(notify_spec, notify=Notify((NotifyChannel(
        ChannelType.SLACK, "s", frozenset({NotifyEvent.RELEASED})),), 60))
    assert overdue.watch(deaf, **args) is None


def test_the_training_watch_never_raises_when_sending_breaks(
        notify_spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(deliver, "send", broken)
    tick = overdue.watch(_with_channels(notify_spec), dag_id="d", run_id="r", try_number=1,
                         run_dir=tmp_path, task_log=None,
                         context={"dag_run": _Run(datetime(2026, 1, 1, tzinfo=UTC))})
    assert tick is not None
    tick()  # logged, not raised


def test_doctor_names_missing_mistyped_and_incomplete_channel_connections(
        notify_spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftflow.notify import connections

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEAM", json.dumps(
        {"conn_type": "smtp", "host": "mail.example.com", "password": "mail-secret-123"}))
    found = {name: (level, detail) for name, level, detail in
             connections.channel_checks([notify_spec])}
    level, detail = found["notify email smtp_team"]
    assert level == "warn" and "no from_email" in detail and "mail-secret-123" not in detail
    level, detail = found["notify slack slack_team"]
    assert level == "warn" and "'slack_team' is not defined (used by fixture_notify)" in detail
    assert "airflow connections add slack_team --conn-type slackwebhook" in detail
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEAM", json.dumps({"conn_type": "smtp"}))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEAM", json.dumps(
        {"conn_type": "smtp", "host": "mail.example.com",
         "extra": {"from_email": "bot@example.com"}}))
    found = {name: (level, detail) for name, level, detail in
             connections.channel_checks([notify_spec])}
    assert found["notify email smtp_team"] == ("ok", "defined (smtp, used by fixture_notify)")
    assert "has type 'smtp', a slack channel needs 'slackwebhook'" in \
        found["notify slack slack_team"][1]


def test_the_readme_downstream_dag_builds_and_is_scheduled_on_the_release_asset(
        project_root: Path) -> None:
    """The README's example is code a team copies: it must build as Airflow reads it."""
    import re

    from airflow.sdk import Asset

    readme = (project_root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Downstream DAGs on a new release.**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    dag = namespace["deploy_smoke"]()
    assert dag.dag_id == "deploy_smoke" and list(dag.task_dict) == ["deploy"]
    assert dag.timetable.asset_condition == Asset(expand.release_asset_uri("smoke-cpu"))
