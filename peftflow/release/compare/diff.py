"""Two sides set against each other: suite by suite, the facts that matter, the profile keys.

Every number is the one in a side's metrics.json; a change is B minus A. The CIs are intervals
of relative_change (adapted/base - 1), so they are comparable only where both sides measured
from the same base loss on the same suite data; where not, the comparison warns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow.release.compare.readers import ProfileRecord, Suite
from peftflow.release.compare.sides import Side


@dataclass(frozen=True)
class SuiteRow:
    name: str
    a: Suite | None  # None: the suite is only in B
    b: Suite | None

    @property
    def kind(self) -> str:
        return "/".join(dict.fromkeys(s.kind for s in (self.a, self.b) if s))

    @property
    def only_in(self) -> str | None:
        return "B" if self.a is None else "A" if self.b is None else None

    @property
    def change(self) -> float | None:
        """B's adapted loss minus A's."""
        return None if self.a is None or self.b is None else \
            self.b.adapted_loss - self.a.adapted_loss

    @property
    def change_pct(self) -> float | None:
        if self.a is None or self.b is None or not self.a.adapted_loss:
            return None
        return (self.b.adapted_loss - self.a.adapted_loss) / self.a.adapted_loss * 100

    @property
    def ci_overlap(self) -> bool | None:
        if self.a is None or self.b is None:
            return None
        return max(self.a.ci95[0], self.b.ci95[0]) <= min(self.a.ci95[1], self.b.ci95[1])


@dataclass(frozen=True)
class Fact:
    name: str
    a: str
    b: str

    @property
    def same(self) -> bool:
        return self.a == self.b


@dataclass(frozen=True)
class KeyDiff:
    key: str  # dotted, e.g. training.lr_init
    a: Any
    b: Any
    in_a: bool  # False: the key is not set in A's profile
    in_b: bool


@dataclass(frozen=True)
class ConfigDiff:
    identical: bool | None  # None: a profile could not be read
    differences: tuple[KeyDiff, ...]
    summary: str  # one line that says what the differences amount to


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    suites: tuple[SuiteRow, ...]
    facts: tuple[Fact, ...]
    config: ConfigDiff
    warnings: tuple[str, ...]  # of the sides (prefixed A/B) and of the comparison

    def as_dict(self, png: Path | None) -> dict[str, Any]:
        """Everything, as the one JSON document `peftflow compare --json` prints."""
        def suite(s: Suite | None) -> dict[str, Any] | None:
            return None if s is None else {
                "kind": s.kind, "base_loss": s.base_loss, "adapted_loss": s.adapted_loss,
                "relative_change": s.relative_change, "ci95": list(s.ci95)}

        def side(s: Side) -> dict[str, Any]:
            p = s.profile
            return {"label": s.label, "kind": str(s.kind), "folder": str(s.folder),
                    "metrics": str(s.metrics_path),
                    "profile": {"name": p.name, "sha256": p.sha256, "read_from": p.read_from,
                                "recorded_copy": p.recorded_copy},
                    "loss_data": None if s.loss_path is None else str(s.loss_path),
                    "steps": len(s.losses)}

        return {
            "a": side(self.a), "b": side(self.b),
            "suites": [{"suite": r.name, "kind": r.kind, "only_in": r.only_in,
                        "a": suite(r.a), "b": suite(r.b), "change": r.change,
                        "change_pct": r.change_pct, "ci_overlap": r.ci_overlap}
                       for r in self.suites],
            "facts": [{"fact": f.name, "a": f.a, "b": f.b, "same": f.same} for f in self.facts],
            "config": {"identical": self.config.identical, "summary": self.config.summary,
                       "differences": [{"key": d.key, "a": d.a, "b": d.b, "in_a": d.in_a,
                                        "in_b": d.in_b} for d in self.config.differences]},
            "png": None if png is None else str(png),
            "warnings": list(self.warnings),
        }


def suite_rows(a: Side, b: Side) -> tuple[SuiteRow, ...]:
    """A's suites in A's order, then those only B has in B's."""
    theirs = {s.name: s for s in b.suites}
    mine = {s.name for s in a.suites}
    return tuple([SuiteRow(s.name, s, theirs.get(s.name)) for s in a.suites]
                 + [SuiteRow(s.name, None, s) for s in b.suites if s.name not in mine])


def _suite_warnings(rows: tuple[SuiteRow, ...]) -> list[str]:
    found = []
    for row in rows:
        if row.a is None or row.b is None:
            continue
        if row.a.kind != row.b.kind:
            found.append(f"suite {row.name} is {row.a.kind} in A but {row.b.kind} in B")
        if row.a.data_sha256 != row.b.data_sha256 or not math.isclose(
                row.a.base_loss, row.b.base_loss, rel_tol=1e-9):
            found.append(f"suite {row.name}: A and B were scored from different bases (base "
                         f"loss A {row.a.base_loss:.6g}, B {row.b.base_loss:.6g}; suite data "
                         f"{'the same' if row.a.data_sha256 == row.b.data_sha256 else 'differs'}"
                         "): their relative changes and CIs do not share a baseline")
    return found


def _same(x: Any, y: Any) -> bool:
    return bool(x == y) and isinstance(x, bool) == isinstance(y, bool)  # YAML: 1 is not true


def config_diff(a: ProfileRecord, b: ProfileRecord) -> ConfigDiff:
    """The flattened profile keys whose values differ between A and B."""
    unread = [n for n, p in (("A", a), ("B", b)) if p.values is None]
    if a.values is None or b.values is None:
        return ConfigDiff(None, (), f"config differences unknown: the training profile of "
                          f"{' and '.join(unread)} could not be read (see the warnings)")
    keys = sorted(set(a.values) | set(b.values))
    diffs = tuple(KeyDiff(k, a.values.get(k), b.values.get(k), k in a.values, k in b.values)
                  for k in keys if (k in a.values) != (k in b.values)
                  or not _same(a.values.get(k), b.values.get(k)))
    if diffs:
        return ConfigDiff(False, diffs, f"{len(diffs)} training-profile key"
                          f"{'s differ' if len(diffs) > 1 else ' differs'}")
    if a.sha256 is not None and a.sha256 == b.sha256:
        return ConfigDiff(True, (), f"training profiles are identical (sha256 {a.sha256})")
    return ConfigDiff(True, (), "training profiles set every key to the same value (the files "
                      "differ only in comments or layout)")


def _facts(a: Side, b: Side) -> tuple[Fact, ...]:
    def both(name: str, value: Any) -> Fact:
        return Fact(name, *(str(value(s) or "-") for s in (a, b)))

    facts = [both("profile", lambda s: f"{s.profile.name} {s.profile.sha256}"),
             both("dataset", lambda s: s.dataset), both("base model",
                                                        lambda s: s.base_model_sha256),
             both("adapter", lambda s: s.adapter_sha256), both("gate", lambda s: s.gate),
             both("released as", lambda s: s.released_as or "not released"),
             both("training steps", lambda s: len(s.losses) if s.loss_path else None)]
    if a.gate_reasons or b.gate_reasons:
        facts.append(both("gate reasons", lambda s: "; ".join(s.gate_reasons)))
    return tuple(facts)


def compare(a: Side, b: Side) -> Comparison:
    rows = suite_rows(a, b)
    warnings = [f"{name} ({side.label}): {w}" for name, side in (("A", a), ("B", b))
                for w in side.warnings]
    return Comparison(a, b, rows, _facts(a, b), config_diff(a.profile, b.profile),
                      tuple(warnings + _suite_warnings(rows)))
