"""The blocking release gate: truth table of verdicts, dataset quality, allow_warn, overrides."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peftflow.errors import IntegrityError, MissingInputError
from peftflow.release import gate
from peftflow.store import audit, audit_verify

EVAL_RULES = {
    "pass": [
        {"rule": "min_domain_improvement", "suite": "pydoc_domain", "comparison": ">=",
         "threshold": 0.02, "value": 0.137, "outcome": "pass", "message": "domain -13.7 %"},
        {"rule": "max_retention_increase", "suite": "lambada", "comparison": "<=",
         "threshold": 0.05, "value": 0.0123, "outcome": "pass", "message": "retention within 5 %"},
    ],
    "fail": [
        {"rule": "min_domain_improvement", "suite": "pydoc_domain", "comparison": ">=",
         "threshold": 0.02, "value": 0.137, "outcome": "pass", "message": "domain -13.7 %"},
        {"rule": "max_retention_increase", "suite": "lambada", "comparison": "<=",
         "threshold": 0.05, "value": 0.0812, "outcome": "fail",
         "message": "retention loss rose by 8.1 %"},
    ],
}
_PASS = {"rule": "document_count", "threshold": 100, "value": 506, "outcome": "pass",
         "message": "506 documents", "offending_lines": []}
QUALITY_RULES = {
    "pass": [_PASS],
    "warn": [_PASS, {"rule": "duplicate_fraction", "threshold": 0.02, "value": 0.031,
                     "outcome": "warn", "message": "3.1 % duplicate documents",
                     "offending_lines": [4, 9, 77]}],
    "fail": [{"rule": "document_count", "threshold": 100, "value": 80, "outcome": "fail",
              "message": "too few documents for the profile", "offending_lines": []}],
}


def verdict_doc(verdict: str, rules: list) -> dict:
    return {"schema_version": 1, "verdict": verdict, "adapter_sha256": "b" * 64,
            "metrics_sha256": "c" * 64, "profile": "smoke-cpu",
            "created_at": "2026-11-27T12:00:00.000+00:00",
            "thresholds": {"min_domain_improvement": 0.02, "max_retention_increase": 0.05,
                           "baseline_tolerance": None},
            "rules": rules, "notes": [],
            "reasons": [r["message"] for r in rules if r["outcome"] == "fail"]}


def write_verdict(folder: Path, verdict: str | None, rules: list | None = None) -> Path:
    path = folder / "verdict.json"
    if verdict is not None:
        rules = EVAL_RULES[verdict] if rules is None else rules
        path.write_text(json.dumps(verdict_doc(verdict, rules)))
    return path


def quality_doc(verdict: str) -> dict:
    return {"schema_version": 1,
            "dataset": {"name": "pydoc-docs", "version": "v1", "manifest_sha256": "a" * 64},
            "verdict": verdict, "records": 506, "documents": 506, "tokens": 91234,
            "invalid_records": 0, "thresholds": {"max_invalid_records": 0},
            "rules": QUALITY_RULES[verdict], "reasons": []}


def write_quality(folder: Path, verdict: str | None) -> Path:
    path = folder / "quality.json"
    if verdict is not None:
        path.write_text(json.dumps(quality_doc(verdict)))
    return path


OK_OVERRIDE = gate.Override(actor="alice", reason="retention dip accepted for the demo",
                            allowed_by_spec=True)
NOT_ALLOWED = gate.Override(actor="alice", reason="ship it", allowed_by_spec=False)
NO_REASON = gate.Override(actor="alice", reason="  ", allowed_by_spec=True)


@pytest.mark.parametrize(
    ("verdict", "quality", "allow_warn", "override", "release", "overridden", "match"),
    [
        ("pass", "pass", False, None, True, False, r"^$"),
        ("pass", "warn", True, None, True, False, r"^$"),
        ("pass", "warn", False, None, False, False,
         r"^dataset quality rule 'duplicate_fraction' warn: measured 0\.031, threshold 0\.02 "
         r"\(3\.1 % duplicate documents\); warnings block because the spec sets "
         r"allow_warn: false$"),
        ("pass", "fail", True, None, False, False,
         r"^dataset quality rule 'document_count' fail: measured 80, threshold 100 "
         r"\(too few documents for the profile\)$"),
        ("fail", "pass", False, None, False, False,
         r"^evaluation rule 'max_retention_increase' on suite 'lambada': measured 0\.0812, "
         r"required <= 0\.05 \(retention loss rose by 8\.1 %\)$"),
        ("fail", "fail", True, None, False, False,
         r"^evaluation rule 'max_retention_increase'.*\n"
         r"dataset quality rule 'document_count' fail"),
        ("fail", "warn", True, OK_OVERRIDE, True, True,
         r"^evaluation rule 'max_retention_increase' on suite 'lambada': measured 0\.0812"),
        ("fail", "pass", False, NOT_ALLOWED, False, False,
         r"\noverride requested by alice refused: the spec does not allow overrides"),
        ("fail", "pass", False, NO_REASON, False, False,
         r"\noverride requested by alice refused: an override needs both an actor and a reason"),
        ("pass", "pass", False, OK_OVERRIDE, True, False, r"^$"),
        (None, "pass", False, None, False, False,
         r"^evaluation verdict .*verdict\.json is missing; the gate never releases without "
         r"it; rerun evaluate_adapter$"),
        ("pass", None, True, None, False, False,
         r"^dataset quality status .*quality\.json is missing; .*rerun prepare_dataset$"),
        (None, "pass", False, OK_OVERRIDE, False, False,
         r"override requested by alice refused: evidence is missing or invalid"),
        ("fail", "fail", False, OK_OVERRIDE, True, True, r"document_count' fail"),
    ],
)
def test_gate_truth_table(tmp_path: Path, verdict: str | None, quality: str | None,
                          allow_warn: bool, override: gate.Override | None, release: bool,
                          overridden: bool, match: str) -> None:
    decision = gate.decide(write_quality(tmp_path, quality), write_verdict(tmp_path, verdict),
                           allow_warn=allow_warn, override=override)
    assert decision.release is release
    assert decision.overridden is overridden
    assert re.search(match, "\n".join(decision.reasons)), decision.reasons
    if overridden:
        assert any(c.check == "override" and c.outcome == "pass" for c in decision.checks)
        assert decision.reasons, "an override keeps the reasons it overrode"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"evaluation verdict .* is unusable: not valid JSON"),
        (json.dumps({**verdict_doc("pass", EVAL_RULES["pass"]), "verdict": "maybe"}),
         r"is unusable: \$\.verdict: 'maybe' is not one of \['pass', 'fail'\]"),
        (json.dumps({**verdict_doc("pass", EVAL_RULES["pass"]), "rules": "all good"}),
         r"is unusable: \$\.rules: 'all good' is not of type 'array'"),
        (json.dumps(verdict_doc("pass", EVAL_RULES["fail"])),
         r"says pass but 1 rule\(s\) failed; the file is inconsistent"),
        (json.dumps({**verdict_doc("fail", EVAL_RULES["pass"]),
                     "reasons": ["suite lambada produced no tokens"]}),
         r"^evaluation verdict is fail: suite lambada produced no tokens$"),
        ("null", r"is unusable: \$: None is not of type 'object'"),
    ],
)
def test_bad_or_inconsistent_verdict_blocks(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "verdict.json").write_text(content)
    decision = gate.decide(write_quality(tmp_path, "pass"), tmp_path / "verdict.json",
                           allow_warn=True)
    assert not decision.release
    assert re.search(match, "\n".join(decision.reasons), re.MULTILINE), decision.reasons
    if decision.eval_verdict is None or "inconsistent" in match:
        overridden = gate.decide(write_quality(tmp_path, "pass"), tmp_path / "verdict.json",
                                 allow_warn=True, override=OK_OVERRIDE)
        assert not overridden.release, "an override must not lift missing or invalid evidence"


def test_quality_that_contradicts_its_rules_blocks(tmp_path: Path) -> None:
    path = write_quality(tmp_path, "fail")
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "verdict": "pass"}))
    decision = gate.decide(path, write_verdict(tmp_path, "pass"), allow_warn=True)
    assert not decision.release
    assert "says pass but its rules say otherwise" in decision.reasons[0]


def test_decision_round_trips_and_records_evidence_hashes(tmp_path: Path) -> None:
    decision = gate.decide(write_quality(tmp_path, "warn"), write_verdict(tmp_path, "pass"),
                           allow_warn=True)
    path = gate.write_decision(decision, tmp_path / "gate" / "gate_decision.json")
    again = gate.read_decision(path)
    assert again == decision
    assert again.decision_id == decision.decision_id
    from peftflow.store.hashing import sha256_file
    assert again.evidence_sha("verdict") == sha256_file(tmp_path / "verdict.json")
    assert again.quality_rules[1]["offending_lines"] == [4, 9, 77]


def test_an_edited_decision_file_is_refused(tmp_path: Path) -> None:
    decision = gate.decide(write_quality(tmp_path, "pass"), write_verdict(tmp_path, "fail"),
                           allow_warn=True)
    path = gate.write_decision(decision, tmp_path / "gate_decision.json")
    doc = json.loads(path.read_text())
    doc["release"], doc["reasons"] = True, []
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="decision_id .* does not match its content"):
        gate.read_decision(path)
    with pytest.raises(MissingInputError, match="run the release gate first"):
        gate.read_decision(tmp_path / "absent.json")


def test_blocked_record_is_written_once_per_decision(tmp_path: Path) -> None:
    decision = gate.decide(write_quality(tmp_path, "pass"), write_verdict(tmp_path, "fail"),
                           allow_warn=True)
    root = tmp_path / "releases"
    first = gate.record_block(decision, "smoke-cpu", "smoke", "manual__1", try_number=1,
                              actor="scheduler", root=root)
    again = gate.record_block(decision, "smoke-cpu", "smoke", "manual__1", try_number=2, root=root)
    assert again == first
    lines = (root / "smoke-cpu" / "blocked.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["reasons"] == list(decision.reasons)
    passing = gate.decide(write_quality(tmp_path, "pass"), write_verdict(tmp_path, "pass"),
                          allow_warn=True)
    with pytest.raises(ValueError, match="decision that releases"):
        gate.record_block(passing, "smoke-cpu", "smoke", "manual__2", root=root)


@pytest.mark.parametrize(
    ("verdict", "override", "kind"),
    [("pass", None, "gate_passed"), ("fail", None, "gate_blocked"),
     ("fail", OK_OVERRIDE, "gate_override")],
)
def test_gate_audit_events_chain_into_the_log(tmp_path: Path, verdict: str,
                                              override: gate.Override | None, kind: str) -> None:
    decision = gate.decide(write_quality(tmp_path, "pass"), write_verdict(tmp_path, verdict),
                           allow_warn=True, override=override)
    event = audit.append_event(
        gate.audit_event(decision, dag_id="smoke", run_id="manual__1", task_id="release_gate",
                         try_number=1, actor="alice"), tmp_path / "audit.jsonl")
    assert event["event"] == kind
    assert event["details"]["reasons"] == list(decision.reasons)
    assert [i["name"] for i in event["inputs"]] == ["quality", "verdict"]
    assert audit_verify.verify(tmp_path / "audit.jsonl") == []


def test_log_lines_of_a_passing_retrain_name_every_rule_and_the_release_compared_with(
        tmp_path: Path) -> None:
    rules = [*EVAL_RULES["pass"],
             {"rule": "no_regression_vs_release", "suite": "lambada", "comparison": "<=",
              "threshold": 7.1, "value": 7.05, "outcome": "pass", "message": "not worse"}]
    decision = gate.decide(write_quality(tmp_path, "warn"), write_verdict(tmp_path, "pass", rules),
                           allow_warn=True)
    lines = gate.log_lines(decision, "smoke-cpu r0001", compare_to_release=True)
    assert lines == [
        "eval rule min_domain_improvement, suite pydoc_domain: threshold >= 0.02, "
        "measured 0.137 -> pass",
        "eval rule max_retention_increase, suite lambada: threshold <= 0.05, "
        "measured 0.0123 -> pass",
        "eval rule no_regression_vs_release, suite lambada: threshold <= 7.1, "
        "measured 7.05 -> pass",
        "dataset rule document_count: threshold 100, measured 506 -> pass",
        "dataset rule duplicate_fraction: threshold 0.02, measured 0.031 -> warn "
        "(allowed: allow_warn)",
        "check eval_verdict -> pass: evaluation verdict is pass",
        "check dataset_quality -> warn: dataset quality verdict is warn",
        "compared with release smoke-cpu r0001",
        "gate decision: release",
    ]


def test_log_lines_of_a_blocked_decision_give_the_failed_rule_and_every_reason(
        tmp_path: Path) -> None:
    decision = gate.decide(write_quality(tmp_path, "warn"), write_verdict(tmp_path, "fail"),
                           allow_warn=False)
    lines = gate.log_lines(decision, None, compare_to_release=True)
    assert ("eval rule max_retention_increase, suite lambada: threshold <= 0.05, "
            "measured 0.0812 -> fail") in lines
    assert ("dataset rule duplicate_fraction: threshold 0.02, measured 0.031 -> warn "
            "(blocks: allow_warn is false)") in lines
    assert "no earlier release: comparison skipped" in lines
    assert lines[-1].startswith("gate decision: block, 2 reasons: evaluation rule "
                                "'max_retention_increase'")
    assert lines[-1].count(" | ") == 1


def test_log_lines_show_missing_evidence_an_override_and_no_comparison_line_when_none_is_made(
        tmp_path: Path) -> None:
    missing = gate.decide(write_quality(tmp_path, "pass"), write_verdict(tmp_path, None),
                          allow_warn=True)
    lines = gate.log_lines(missing)
    assert any(line.startswith("check verdict -> missing: evaluation verdict ") for line in lines)
    assert not any("compar" in line for line in lines)  # the spec asked for no comparison
    assert lines[-1].startswith("gate decision: block, 1 reason: evaluation verdict ")
    overridden = gate.decide(write_quality(tmp_path, "pass"), write_verdict(tmp_path, "fail"),
                             allow_warn=True, override=OK_OVERRIDE)
    last = gate.log_lines(overridden)[-1]
    assert last.startswith("gate decision: release, by override of alice (retention dip "
                           "accepted for the demo); lifted: evaluation rule")
