"""The outcome of a rule, and of a verdict over rules, as quality.json, verdict.json and
gate_decision.json write it: the dataset rules use all three, the evaluation rules never warn."""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"
    FAIL = "fail"
