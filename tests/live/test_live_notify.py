"""Notifications and the release asset under the real scheduler (SQLite), with real receivers
on loopback: an SMTP server (aiosmtpd) and an HTTP server standing in for a Slack webhook.

A release, a blocked gate and a failure whose retries run out each produce exactly one message
per channel, with the facts a reader acts on; receivers that are down leave the run's outcome
as it was and are audited; a training past its deadline sends one `training_overdue`; a team's
own DAG scheduled on peftflow-release://<profile> starts on the release with its version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import receivers as rx
from live_harness import Live
from live_scenarios import (
    CONSUMER,
    NOTIFY_BLOCKED,
    NOTIFY_DOWN,
    NOTIFY_FAILED,
    NOTIFY_OK,
    NOTIFY_PROFILE,
    NOTIFY_SLOW,
    OVERDUE_AFTER_S,
)

pytestmark = [pytest.mark.live,
              pytest.mark.parametrize("deployment", ["sqlite"], indirect=True)]


@dataclass
class Receivers:
    smtp: rx.SmtpReceiver
    hook: rx.WebhookReceiver

    def mails_about(self, run_id: str) -> list[rx.Mail]:
        return [m for m in self.smtp.mails if run_id in m.text]

    def posts_about(self, run_id: str) -> list[str]:
        return [t for t in self.hook.texts() if run_id in t]


@pytest.fixture(scope="module")
def receivers(deployment: Live) -> Iterator[Receivers]:
    conns = json.loads((deployment.root / rx.CONNECTIONS_FILE).read_text())
    smtp = rx.SmtpReceiver(rx.port_of(conns, rx.SMTP_CONN)).start()
    hook = rx.WebhookReceiver(rx.port_of(conns, rx.SLACK_CONN)).start()
    try:
        yield Receivers(smtp, hook)
    finally:
        smtp.stop()
        hook.stop()


@dataclass
class Outcomes:
    runs: dict[str, str]  # dag_id -> run_id
    states: dict[str, str]
    seconds: float


def _settle(check: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def outcomes(deployment: Live, receivers: Receivers) -> Outcomes:
    """A release, a blocked gate, a failure and a slow training, started at once."""
    live = deployment
    t0 = time.monotonic()
    runs = {NOTIFY_OK: live.trigger_rest(NOTIFY_OK, {"note": "notify: release"}),
            NOTIFY_BLOCKED: live.trigger_rest(NOTIFY_BLOCKED, {"note": "notify: blocked"}),
            NOTIFY_FAILED: live.trigger_rest(NOTIFY_FAILED, {"note": "notify: failure",
                                                            "force_rerun": True}),
            NOTIFY_SLOW: live.trigger_rest(NOTIFY_SLOW, {"note": "notify: deadline"})}
    states = {dag_id: live.wait(dag_id, run_id, timeout=600) for dag_id, run_id in runs.items()}
    return Outcomes(runs, states, time.monotonic() - t0)


def _release(live: Live, dag_id: str, run_id: str) -> dict[str, object]:
    """The manifest release_adapter of this run handed on (its training may be reused from
    a twin run started at the same time, so live.release_for's own-training check is not it)."""
    doc = live.stage_status(dag_id, run_id, "release_adapter")
    path = {o["name"]: o["path"] for o in doc["outputs"]}["release_manifest"]
    return dict(json.loads(Path(path).read_text()))


def _one_each(receivers: Receivers, run_id: str) -> tuple[rx.Mail, str]:
    """The one e-mail and the one webhook post about this run (none sent twice)."""
    assert _settle(lambda: receivers.mails_about(run_id) and receivers.posts_about(run_id))
    time.sleep(2)  # anything sent twice would have arrived by now
    mails, posts = receivers.mails_about(run_id), receivers.posts_about(run_id)
    assert len(mails) == 1 and len(posts) == 1, (mails, posts)
    return mails[0], posts[0]


def _audit(live: Live, run_id: str, kind: str) -> list[dict[str, object]]:
    return [e for e in live.audit_events(run_id) if e.get("event") == kind]


def test_a_release_sends_exactly_one_message_per_channel_with_version_and_metrics(
        deployment: Live, receivers: Receivers, outcomes: Outcomes,
        measure: Callable[..., None]) -> None:
    live, run_id = deployment, outcomes.runs[NOTIFY_OK]
    assert outcomes.states[NOTIFY_OK] == "success", live.report(NOTIFY_OK, run_id)
    release = _release(live, NOTIFY_OK, run_id)
    version = release["version"]
    mail, post = _one_each(receivers, run_id)
    assert mail.subject == f"[peftflow] {NOTIFY_OK}: released {NOTIFY_PROFILE} {version}"
    assert mail.recipients == ["team@example.com"] and mail.sender == rx.FROM
    for text in (mail.plain, post):
        assert "Metrics that passed the gate:" in text, text
        metrics: dict[str, Any] = release["metrics"]  # type: ignore[assignment]
        for suite in metrics:
            assert f"{suite} ({metrics[suite]['kind']}): loss" in text, text
        assert "95% CI" in text and "gate min_domain_improvement >= 0.01: pass" in text, text
        assert f"releases/{NOTIFY_PROFILE}/{version}" in text, text
        assert "release_manifest.json" in text and "notify: release" in text, text
    sent = _audit(live, run_id, "notification_sent")
    assert sorted(str(e["details"]["channel"]) for e in sent) == ["email", "slack"], sent  # type: ignore[index]
    assert _audit(live, run_id, "notification_failed") == []
    measure("notifications: release", live.kind, version=version,
            runs_wall_s=round(outcomes.seconds, 1), mail_subject=mail.subject)
    print("[live] the release e-mail:\n" + mail.plain)
    print("[live] the release webhook post:\n" + post)


def test_a_blocked_gate_sends_one_message_with_the_gates_reasons(
        deployment: Live, receivers: Receivers, outcomes: Outcomes) -> None:
    run_id = outcomes.runs[NOTIFY_BLOCKED]
    assert outcomes.states[NOTIFY_BLOCKED] == "failed"
    mail, post = _one_each(receivers, run_id)
    assert mail.subject == f"[peftflow] {NOTIFY_BLOCKED}: release blocked by the gate"
    for text in (mail.plain, post):
        assert "Why:" in text and "min_domain_improvement" in text and "0.99" in text, text
        assert "gate_decision.json" in text, text
        assert "run failed" not in text.lower(), "a blocked run must not also say failed"
    print("[live] the blocked webhook post:\n" + post)


def test_a_failure_whose_retries_run_out_sends_one_message_with_the_error(
        deployment: Live, receivers: Receivers, outcomes: Outcomes) -> None:
    run_id = outcomes.runs[NOTIFY_FAILED]
    assert outcomes.states[NOTIFY_FAILED] == "failed"
    mail, post = _one_each(receivers, run_id)
    assert mail.subject == (f"[peftflow] {NOTIFY_FAILED}: run failed in train_adapter "
                                "(retries exhausted, 2 tries)")
    for text in (mail.plain, post):
        assert "train_adapter retries exhausted: failed on try 2 of 2." in text, text
        assert "exit 75" in text and "RESOURCE" in text, text
        assert "CUDA out of memory (simulated)" in text, text  # the stage's own last words
        assert "/tasks/train_adapter" in text, text
    print("[live] the failure e-mail:\n" + mail.plain)


def test_the_webhook_credential_stays_out_of_logs_notes_and_the_audit_trail(
        deployment: Live, receivers: Receivers, outcomes: Outcomes) -> None:
    live = deployment
    paths = {path for path, _ in receivers.hook.posts}
    assert paths == {f"/services/{rx.WEBHOOK_TOKEN}"}, paths  # the connection's token was used
    assert rx.WEBHOOK_TOKEN not in live.audit_log.read_text(encoding="utf-8")
    leaks = [str(p) for p in live.logs.rglob("*.log")
             if rx.WEBHOOK_TOKEN in p.read_text(errors="replace")]
    assert leaks == [], leaks
    for dag_id, run_id in outcomes.runs.items():
        assert rx.WEBHOOK_TOKEN not in live.wait_note(dag_id, run_id), dag_id


def test_a_training_past_its_deadline_sends_one_training_overdue_message(
        deployment: Live, receivers: Receivers, outcomes: Outcomes,
        measure: Callable[..., None]) -> None:
    live, run_id = deployment, outcomes.runs[NOTIFY_SLOW]
    assert outcomes.states[NOTIFY_SLOW] == "success", live.report(NOTIFY_SLOW, run_id)
    posts = receivers.posts_about(run_id)
    assert len(posts) == 1, posts  # the channel hears only training_overdue
    assert "training overdue" in posts[0] and "train_adapter" in posts[0], posts[0]
    assert f"training_overdue_after_s: {OVERDUE_AFTER_S}" in posts[0], posts[0]
    assert receivers.mails_about(run_id) == []
    claim = live.run_dir(NOTIFY_SLOW, run_id) / "notifications" / "training_overdue.json"
    assert json.loads(claim.read_text())["deliveries"][0]["sent"] is True
    train = live.stage_status(NOTIFY_SLOW, run_id, "train_adapter")
    measure("notifications: training overdue", live.kind, deadline_s=OVERDUE_AFTER_S,
            training_s=train.get("duration_s"))
    print("[live] the overdue webhook post:\n" + posts[0])


def test_a_downstream_dag_scheduled_on_the_release_asset_starts_and_receives_the_version(
        deployment: Live, outcomes: Outcomes) -> None:
    live, run_id = deployment, outcomes.runs[NOTIFY_OK]
    release = _release(live, NOTIFY_OK, run_id)
    received = live.wait_path(f"{release['version']}.json", timeout=120,
                              under=live.root / "received")
    extra = json.loads(received.read_text())
    assert extra["version"] == release["version"] and extra["profile"] == NOTIFY_PROFILE
    assert Path(extra["manifest"]).is_file() and extra["run_id"] == run_id, extra
    consumer_runs = live.runs(CONSUMER)
    assert [r["run_type"] for r in consumer_runs] == ["asset_triggered"], consumer_runs
    # a blocked or failed run released nothing, so it started nothing
    assert len(list((live.root / "received").glob("*.json"))) == 1


def test_receivers_that_are_down_leave_the_outcome_unchanged_and_are_audited(
        deployment: Live, receivers: Receivers, outcomes: Outcomes) -> None:
    live = deployment
    run_id = live.trigger_rest(NOTIFY_DOWN, {"note": "notify: receivers down"})
    live.wait_for(NOTIFY_DOWN, run_id, "success", timeout=420)
    states = live.task_instances(NOTIFY_DOWN, run_id)
    assert states["run_summary"]["state"] == "success", states
    assert _settle(lambda: len(_audit(live, run_id, "notification_failed")) == 2)
    failed = _audit(live, run_id, "notification_failed")
    assert sorted(str(e["details"]["channel"]) for e in failed) == ["email", "slack"]  # type: ignore[index]
    for event in failed:
        assert event["outcome"] == "failed" and event["details"]["error"], event  # type: ignore[index]
        assert rx.WEBHOOK_TOKEN not in json.dumps(event)
    assert _audit(live, run_id, "notification_sent") == []
    assert receivers.mails_about(run_id) == [] and receivers.posts_about(run_id) == []
    log = live.task_log(NOTIFY_DOWN, run_id, "run_summary", 1)
    assert "NOT sent via email:live_smtp_down (the run's outcome is unchanged)" in log, log
