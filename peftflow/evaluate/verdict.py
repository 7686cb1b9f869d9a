"""The evaluation verdict: gate rules over the suite comparisons, each with its evidence."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peftflow.errors import ConfigError
from peftflow.evaluate.suites import SuiteKind
from peftflow.outcome import Outcome

DEFAULT_MIN_DOMAIN_IMPROVEMENT = 0.0
DEFAULT_MAX_RETENTION_INCREASE = 0.05


@dataclass(frozen=True)
class Thresholds:
    min_domain_improvement: float = DEFAULT_MIN_DOMAIN_IMPROVEMENT
    max_retention_increase: float = DEFAULT_MAX_RETENTION_INCREASE
    baseline_tolerance: float | None = None  # set when a released adapter's metrics are given

    def __post_init__(self) -> None:
        for name in ("min_domain_improvement", "max_retention_increase", "baseline_tolerance"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} {value}: use a finite fraction")
        if self.baseline_tolerance is not None and self.baseline_tolerance < 0:
            raise ConfigError(f"--baseline-tolerance {self.baseline_tolerance}: use a fraction "
                              ">= 0, such as 0.01 for 1 %")


@dataclass(frozen=True)
class SuiteResult:
    """What the rules need of one suite's metrics."""

    name: str
    kind: SuiteKind
    base_loss: float
    adapted_loss: float
    relative_change: float
    data_sha256: str
    tokens: int


@dataclass(frozen=True)
class Rule:
    rule: str
    suite: str | None
    comparison: str  # ">=" or "<="
    threshold: float
    value: float
    outcome: Outcome
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "suite": self.suite, "comparison": self.comparison,
                "threshold": self.threshold, "value": self.value,
                "outcome": self.outcome.value, "message": self.message}


@dataclass(frozen=True)
class Verdict:
    rules: tuple[Rule, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def outcome(self) -> Outcome:
        return Outcome.FAIL if any(r.outcome is Outcome.FAIL for r in self.rules) else Outcome.PASS

    @property
    def reasons(self) -> list[str]:
        return [r.message for r in self.rules if r.outcome is Outcome.FAIL]


def _check(rule: str, suite: str | None, value: float, comparison: str, threshold: float,
           what: str) -> Rule:
    ok = value >= threshold if comparison == ">=" else value <= threshold
    where = f" on suite {suite!r}" if suite else ""
    verb = "meets" if ok else "violates"
    message = (f"{rule}{where}: {what} {value:.6g} {verb} the threshold {comparison} "
               f"{threshold:.6g}")
    return Rule(rule, suite, comparison, threshold, value, Outcome.PASS if ok else Outcome.FAIL,
                message)


def judge(
    results: list[SuiteResult],
    thresholds: Thresholds,
    baseline: Mapping[str, Mapping[str, Any]] | None = None,
) -> Verdict:
    """Apply the gate rules; `baseline` is the released adapter's metrics.json `suites`."""
    rules: list[Rule] = []
    notes: list[str] = []
    for kind in SuiteKind:
        count = sum(1 for r in results if r.kind is kind)
        if count == 0:
            rules.append(_check("suite_coverage", None, float(count), ">=", 1.0,
                                f"number of {kind.value} suites evaluated (the release gate "
                                "needs domain and retention results)"))
    for r in results:
        if r.kind is SuiteKind.DOMAIN:
            rules.append(_check("min_domain_improvement", r.name, -r.relative_change, ">=",
                                thresholds.min_domain_improvement,
                                "relative loss improvement (base-adapted)/base"))
        else:
            rules.append(_check("max_retention_increase", r.name, r.relative_change, "<=",
                                thresholds.max_retention_increase,
                                "relative loss increase (adapted-base)/base"))
    if baseline is not None and thresholds.baseline_tolerance is not None:
        tolerance = thresholds.baseline_tolerance
        for r in results:
            released = baseline.get(r.name)
            if released is None:
                notes.append(f"no_regression_vs_release: suite {r.name!r} is not in the "
                             "released adapter's metrics; not compared")
                continue
            if released["data_sha256"] != r.data_sha256 or released["tokens"] != r.tokens:
                notes.append(f"no_regression_vs_release: suite {r.name!r} scored other tokens "
                             "for the released adapter (data or limits changed); not compared")
                continue
            limit = float(released["adapted_loss"]) * (1 + tolerance)
            rules.append(_check("no_regression_vs_release", r.name, r.adapted_loss, "<=", limit,
                                f"adapted loss (released adapter "
                                f"{float(released['adapted_loss']):.6g}, tolerance "
                                f"{tolerance:.6g})"))
    return Verdict(tuple(rules), tuple(notes))


def document(verdict: Verdict, thresholds: Thresholds, **provenance: Any) -> dict[str, Any]:
    """verdict.json (schemas/verdict.schema.json)."""
    return {
        "schema_version": 1,
        "verdict": verdict.outcome.value,
        **provenance,
        "thresholds": {
            "min_domain_improvement": thresholds.min_domain_improvement,
            "max_retention_increase": thresholds.max_retention_increase,
            "baseline_tolerance": thresholds.baseline_tolerance,
        },
        "rules": [r.as_dict() for r in verdict.rules],
        "reasons": verdict.reasons,
        "notes": list(verdict.notes),
    }
