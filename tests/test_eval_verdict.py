"""Verdict rules: domain gain, retention loss, coverage, no regression vs the released adapter."""

from __future__ import annotations

import pytest

from peftflow.errors import ConfigError
from peftflow.evaluate.suites import SuiteKind
from peftflow.evaluate.verdict import Outcome, SuiteResult, Thresholds, document, judge
from peftflow.store import schemas

SHA = "ab" * 32


def result(name: str, kind: SuiteKind, base: float, adapted: float,
           tokens: int = 100) -> SuiteResult:
    return SuiteResult(name, kind, base, adapted, (adapted - base) / base, SHA, tokens)


DOMAIN = result("docs", SuiteKind.DOMAIN, 4.0, 3.6)  # 10 % better
RETENTION = result("general", SuiteKind.RETENTION, 5.0, 5.1)  # 2 % worse


@pytest.mark.parametrize(
    ("min_gain", "max_increase", "outcome", "failed"),
    [
        (0.0, 0.05, Outcome.PASS, []),
        (0.099, 0.05, Outcome.PASS, []),
        (0.101, 0.05, Outcome.FAIL, ["min_domain_improvement"]),
        (0.0, 0.019, Outcome.FAIL, ["max_retention_increase"]),
        (0.2, 0.0, Outcome.FAIL, ["min_domain_improvement", "max_retention_increase"]),
    ],
)
def test_thresholds_decide_the_outcome(
    min_gain: float, max_increase: float, outcome: Outcome, failed: list[str]
) -> None:
    verdict = judge([DOMAIN, RETENTION], Thresholds(min_gain, max_increase))
    assert verdict.outcome is outcome
    assert [r.rule for r in verdict.rules if r.outcome is Outcome.FAIL] == failed
    assert len(verdict.reasons) == len(failed)


def test_failure_reason_names_rule_suite_value_and_threshold() -> None:
    verdict = judge([DOMAIN, RETENTION], Thresholds(min_domain_improvement=0.15))
    assert verdict.reasons == [
        "min_domain_improvement on suite 'docs': relative loss improvement (base-adapted)/base "
        "0.1 violates the threshold >= 0.15"
    ]
    rule = verdict.rules[0]
    assert (rule.suite, rule.comparison, rule.threshold) == ("docs", ">=", 0.15)
    assert rule.value == pytest.approx(0.1)


def test_a_missing_suite_kind_fails_coverage() -> None:
    verdict = judge([DOMAIN], Thresholds())
    assert verdict.outcome is Outcome.FAIL
    assert verdict.rules[0].rule == "suite_coverage"
    assert "number of retention suites evaluated" in verdict.reasons[0]


def test_no_regression_vs_release_compares_adapted_losses_with_tolerance() -> None:
    released = {"docs": {"adapted_loss": 3.5, "data_sha256": SHA, "tokens": 100},
                "general": {"adapted_loss": 5.0, "data_sha256": SHA, "tokens": 100}}
    strict = judge([DOMAIN, RETENTION], Thresholds(baseline_tolerance=0.0), released)
    assert [(r.suite, r.outcome) for r in strict.rules if r.rule == "no_regression_vs_release"] \
        == [("docs", Outcome.FAIL), ("general", Outcome.FAIL)]
    loose = judge([DOMAIN, RETENTION], Thresholds(baseline_tolerance=0.03), released)
    assert loose.outcome is Outcome.PASS
    rule = next(r for r in loose.rules if r.suite == "docs" and r.rule.startswith("no_reg"))
    assert rule.threshold == pytest.approx(3.5 * 1.03)
    assert rule.value == pytest.approx(3.6)


def test_suites_not_comparable_with_the_release_are_noted_not_judged() -> None:
    released = {"docs": {"adapted_loss": 1.0, "data_sha256": "cd" * 32, "tokens": 100}}
    verdict = judge([DOMAIN, RETENTION], Thresholds(baseline_tolerance=0.0), released)
    assert verdict.outcome is Outcome.PASS
    assert not [r for r in verdict.rules if r.rule == "no_regression_vs_release"]
    assert len(verdict.notes) == 2
    assert "scored other tokens" in verdict.notes[0]
    assert "not in the released adapter's metrics" in verdict.notes[1]


def test_verdict_document_matches_its_schema() -> None:
    thresholds = Thresholds(0.2)
    doc = document(judge([DOMAIN, RETENTION], thresholds), thresholds, adapter_sha256=SHA,
                   metrics_sha256=SHA, profile="p", created_at="2026-01-01T00:00:00+00:00")
    schemas.check(doc, "verdict", "verdict.json")
    assert doc["verdict"] == "fail"
    assert doc["reasons"] == [doc["rules"][0]["message"]]


@pytest.mark.parametrize("kwargs", [{"min_domain_improvement": float("nan")},
                                    {"baseline_tolerance": -0.1}])
def test_bad_thresholds_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Thresholds(**kwargs)
