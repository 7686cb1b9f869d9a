"""The run summary (run_summary task log, run note) from audit events, records and states."""

from __future__ import annotations

from typing import Any

from peftflow.airflow import expand, runsummary

RUN = "manual__2026-12-01T10:00:00+00:00"
EARLIER = "manual__2026-11-30T09:00:00+00:00"


def _event(task: str, event: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task, "event": event, "dag_id": "d", "run_id": RUN, **fields}


def _prepare_record(reused: bool) -> dict[str, Any]:
    return {"reused": reused, "reused_from": EARLIER if reused else None,
            "metrics": {"dataset_name": "pydoc-docs", "dataset_version": "v2"}}


def _build(events: list[dict[str, Any]], records: dict[str, Any],
           states: dict[str, str | None] | None = None) -> runsummary.RunSummary:
    return runsummary.build(dag_id="d", run_id=RUN, actor="alice", note="new docs",
                            events=events, records=records, states=states or {})


def test_a_reused_stage_names_the_run_it_came_from_and_a_run_stage_its_duration() -> None:
    summary = _build(
        [_event("prepare_dataset", "task_started"),
         _event("prepare_dataset", "task_reused"),
         _event("train_adapter", "task_started"),
         _event("train_adapter", "task_succeeded", duration_s=53.94),
         _event("evaluate_adapter", "task_succeeded", duration_s=14.0),
         _event("release_gate", "gate_passed"),
         _event("release_adapter", "task_succeeded", duration_s=1.2),
         _event("release_adapter", "release_published")],
        {"prepare_dataset": _prepare_record(True),
         "release_adapter": {"metrics": {"version": "r0002", "profile": "smoke-cpu",
                                         "noop": False}}})
    lines = {s.task_id: s.text() for s in summary.stages}
    assert lines["prepare_dataset"] == (
        f"prepare_dataset: reused (nothing ran; result of run {EARLIER})")
    assert lines["train_adapter"] == "train_adapter: ran (53.9 s)"
    assert lines["release_gate"] == "release_gate: passed"
    assert lines["release_adapter"] == "release_adapter: ran (1.2 s)"
    assert summary.outcome == "released" and summary.release == "smoke-cpu r0002"
    assert summary.headline == "Released smoke-cpu r0002; 3 stage(s) ran, 1 reused"
    assert summary.dataset == "pydoc-docs v2"
    log = "\n".join(summary.log_lines())
    assert log.startswith(f"RUN SUMMARY d / {RUN}: Released smoke-cpu r0002")
    assert "triggered by alice, note: 'new docs'" in log


def test_a_blocked_run_carries_the_gate_reasons_and_the_release_as_not_run() -> None:
    reasons = ["eval_rule:domain_improvement:pydoc-domain: change -0.5 % > threshold -1.0 %"]
    summary = _build(
        [_event("prepare_dataset", "task_succeeded", duration_s=1.0),
         _event("train_adapter", "task_succeeded", duration_s=50.0),
         _event("evaluate_adapter", "task_succeeded", duration_s=12.0),
         _event("release_gate", "gate_blocked", details={"reasons": reasons})],
        {"prepare_dataset": _prepare_record(False)},
        {"release_adapter": "upstream_failed"})
    assert summary.outcome == "blocked" and summary.release is None
    assert summary.reasons == tuple(reasons)
    outcomes = {s.task_id: s.text() for s in summary.stages}
    assert outcomes["release_adapter"] == "release_adapter: not run (upstream failed)"
    note = summary.note_markdown()
    assert note.startswith("**Release blocked by the gate; 3 stage(s) ran, 0 reused**")
    assert "\n\nGate:\n- eval_rule:domain_improvement" in note  # a list after a blank line
    assert note.endswith("Triggered by alice: new docs")


def test_a_failed_stage_is_the_headline_with_its_exit_code_and_later_stages_did_not_run() -> None:
    summary = _build(
        [_event("prepare_dataset", "task_started"),
         _event("prepare_dataset", "task_failed",
                details={"exit_code": 4, "class": "BAD_DATA"})],
        {}, {"prepare_dataset": "failed", "train_adapter": "upstream_failed",
             "evaluate_adapter": "upstream_failed", "release_gate": "upstream_failed",
             "release_adapter": "upstream_failed"})
    assert summary.outcome == "failed"
    assert summary.headline.startswith("Failed in prepare_dataset (exit 4 BAD_DATA)")
    assert [s.outcome for s in summary.stages] == ["failed"] + ["not run"] * 4


def test_a_failure_followed_by_a_successful_retry_counts_as_ran() -> None:
    summary = _build(
        [_event("train_adapter", "task_failed", details={"exit_code": 75, "class": "RESOURCE"}),
         _event("train_adapter", "task_succeeded", duration_s=9.0)], {})
    assert {s.task_id: s.outcome for s in summary.stages}["train_adapter"] == "ran"


def test_the_note_stays_within_airflows_1000_character_limit() -> None:
    reasons = [f"rule {i}: " + "x" * 200 for i in range(10)]
    summary = _build([_event("release_gate", "gate_blocked", details={"reasons": reasons})], {})
    note = summary.note_markdown()
    assert len(note) <= runsummary.NOTE_MAX and note.endswith("…")


def test_no_audit_events_still_gives_a_summary_from_the_task_states() -> None:
    summary = _build([], {}, {t: "success" for t in expand.task_order()})
    assert all(s.outcome == "ran" for s in summary.stages)
    assert summary.outcome == "incomplete"  # no release record: never claims a release
