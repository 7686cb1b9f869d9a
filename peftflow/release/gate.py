"""The blocking release gate: release only on a passing evaluation and a passing dataset.

`decide()` reads the evaluation verdict.json and the dataset quality.json and returns a
GateDecision whose reasons cite each failed rule with its threshold and measured value.
Missing or unreadable evidence always blocks; an override can only lift failed rules, only
when the spec allows it, and only with an actor and a reason, and it stays on record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftflow.errors import IntegrityError, MissingInputError, SpecError
from peftflow.outcome import Outcome
from peftflow.store import atomic, schemas
from peftflow.store.hashing import sha256_bytes, sha256_file
from peftflow.store.status_record import utc_now


@dataclass(frozen=True)
class Override:
    """A request to release despite failed rules (a trigger param); honoured only if allowed."""

    actor: str
    reason: str
    allowed_by_spec: bool


@dataclass(frozen=True)
class Check:
    check: str  # eval_verdict, dataset_quality, eval_rule:<rule>:<suite>, quality_rule:<r>, ...
    outcome: str  # an Outcome (pass, warn, fail), or missing, invalid, refused, unused
    detail: str


@dataclass(frozen=True)
class Evidence:
    """A file the gate read, with its hash at read time (None when it was absent)."""

    name: str  # quality | verdict
    path: str
    sha256: str | None


@dataclass(frozen=True)
class GateDecision:
    release: bool
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    overridden: bool
    allow_warn: bool
    eval_verdict: str | None
    quality_verdict: str | None
    evidence: tuple[Evidence, ...]
    eval_rules: tuple[dict[str, Any], ...] = ()
    quality_rules: tuple[dict[str, Any], ...] = ()
    override: Override | None = None
    decided_at: str = field(default_factory=utc_now)

    @property
    def decision_id(self) -> str:
        """A stable id of this decision (hash of its content), for de-duplicating records."""
        body = json.dumps(self._body(), sort_keys=True, separators=(",", ":"))
        return sha256_bytes(body.encode("utf-8"))[:16]

    def _body(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["reasons"], doc["checks"] = list(self.reasons), [asdict(c) for c in self.checks]
        doc["evidence"] = [asdict(e) for e in self.evidence]
        doc["eval_rules"], doc["quality_rules"] = list(self.eval_rules), list(self.quality_rules)
        return doc

    def as_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, **self._body(), "decision_id": self.decision_id}

    def evidence_sha(self, name: str) -> str | None:
        return next((e.sha256 for e in self.evidence if e.name == name), None)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GateDecision:
        override = doc.get("override")
        return cls(
            release=doc["release"], reasons=tuple(doc["reasons"]),
            checks=tuple(Check(**c) for c in doc["checks"]), overridden=doc["overridden"],
            allow_warn=doc["allow_warn"], eval_verdict=doc.get("eval_verdict"),
            quality_verdict=doc.get("quality_verdict"),
            evidence=tuple(Evidence(**e) for e in doc["evidence"]),
            eval_rules=tuple(doc.get("eval_rules", [])),
            quality_rules=tuple(doc.get("quality_rules", [])),
            override=Override(**override) if override else None, decided_at=doc["decided_at"],
        )


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value)


@dataclass
class _Findings:
    checks: list[Check] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    evidence_ok: bool = True

    def add(self, check: str, outcome: str, detail: str, *, blocks: bool) -> None:
        self.checks.append(Check(check, outcome, detail))
        if blocks:
            self.reasons.append(detail)


def _load(name: str, path: Path, found: _Findings) -> dict[str, Any] | None:
    """The parsed file when it is present and well-formed, else None with a blocking check."""
    what = "dataset quality status" if name == "quality" else "evaluation verdict"
    stage = "prepare_dataset" if name == "quality" else "evaluate_adapter"
    if not path.is_file():
        found.add(name, "missing", f"{what} {path} is missing; the gate never releases without "
                  f"it; rerun {stage}", blocks=True)
        found.evidence_ok = False
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON ({exc})"
    else:
        # The producing stage's own schema: drift between stages blocks instead of guessing.
        bad = schemas.problems(doc, name, str(path))
        problem = "; ".join(f"{p.path}: {p.message}" for p in bad[:3])
    if problem:
        found.add(name, "invalid", f"{what} {path} is unusable: {problem}; rerun {stage}",
                  blocks=True)
        found.evidence_ok = False
        return None
    return doc  # type: ignore[no-any-return]


def _eval_checks(doc: dict[str, Any], path: Path, found: _Findings) -> None:
    failed = [r for r in doc["rules"] if r["outcome"] == Outcome.FAIL]
    for rule in doc["rules"]:
        suite = f"suite {rule['suite']!r}" if rule.get("suite") else "all suites"
        detail = (f"evaluation rule {rule['rule']!r} on {suite}: "
                  f"measured {_num(rule.get('value'))}, required {rule.get('comparison', '')} "
                  f"{_num(rule.get('threshold'))}".replace("  ", " "))
        if rule.get("message"):
            detail += f" ({rule['message']})"
        name = f"eval_rule:{rule['rule']}:{rule.get('suite') or '*'}"
        found.add(name, rule["outcome"], detail, blocks=rule["outcome"] == Outcome.FAIL)
    if doc["verdict"] == Outcome.PASS and failed:
        found.add("eval_verdict", "invalid", f"evaluation verdict {path} says pass but "
                  f"{len(failed)} rule(s) failed; the file is inconsistent", blocks=True)
        found.evidence_ok = False
    elif doc["verdict"] == Outcome.FAIL and not failed:
        extra = "; ".join(str(r) for r in doc.get("reasons", [])) or "no rule named"
        found.add("eval_verdict", Outcome.FAIL, f"evaluation verdict is fail: {extra}",
                  blocks=True)
    else:
        found.add("eval_verdict", doc["verdict"], f"evaluation verdict is {doc['verdict']}",
                  blocks=False)


def _quality_checks(doc: dict[str, Any], path: Path, allow_warn: bool, found: _Findings) -> None:
    verdict, outcomes = doc["verdict"], {r["outcome"] for r in doc["rules"]}
    if (verdict == Outcome.PASS and outcomes & {Outcome.WARN, Outcome.FAIL}) or \
            (verdict == Outcome.WARN and Outcome.FAIL in outcomes):
        found.add("dataset_quality", "invalid", f"dataset quality status {path} says "
                  f"{verdict} but its rules say otherwise; the file is inconsistent", blocks=True)
        found.evidence_ok = False
        return
    blocking = 0
    for rule in doc["rules"]:
        if rule["outcome"] not in (Outcome.WARN, Outcome.FAIL):
            continue
        blocks = rule["outcome"] == Outcome.FAIL or not allow_warn
        blocking += blocks
        detail = (f"dataset quality rule {rule['rule']!r} {rule['outcome']}: measured "
                  f"{_num(rule.get('value'))}, threshold {_num(rule.get('threshold'))}")
        if rule.get("message"):
            detail += f" ({rule['message']})"
        if rule["outcome"] == Outcome.WARN and not allow_warn:
            detail += "; warnings block because the spec sets allow_warn: false"
        found.add(f"quality_rule:{rule['rule']}", rule["outcome"], detail, blocks=blocks)
    ok = verdict == Outcome.PASS or (verdict == Outcome.WARN and allow_warn)
    detail = f"dataset quality verdict is {verdict}"
    if not ok and not blocking:
        detail += ": " + ("; ".join(str(r) for r in doc.get("reasons", [])) or "no rule named")
    found.add("dataset_quality", verdict, detail, blocks=not ok and not blocking)


def _summary(rules: list[Any]) -> tuple[dict[str, Any], ...]:
    """Rules as recorded in the decision; long offending-line lists are cut to 20 entries."""
    kept = []
    for rule in rules:
        rule = dict(rule)
        if isinstance(rule.get("offending_lines"), list):
            rule["offending_lines"] = rule["offending_lines"][:20]
        kept.append(rule)
    return tuple(kept)


def decide(quality_path: str | Path, verdict_path: str | Path, *, allow_warn: bool,
           override: Override | None = None) -> GateDecision:
    """The gate's decision; never raises for bad evidence (that blocks, with a reason)."""
    found = _Findings()
    qpath, vpath = Path(quality_path).resolve(), Path(verdict_path).resolve()
    verdict = _load("verdict", vpath, found)
    quality = _load("quality", qpath, found)
    if verdict is not None:
        _eval_checks(verdict, vpath, found)
    if quality is not None:
        _quality_checks(quality, qpath, allow_warn, found)
    release, overridden = not found.reasons, False
    if override is not None:
        who = f"override requested by {override.actor or '(nobody)'}"
        if release:
            found.add("override", "unused", f"{who} was not needed: the gate passed", blocks=False)
        elif not found.evidence_ok:
            found.add("override", "refused", f"{who} refused: evidence is missing or invalid, "
                      "and an override can only lift failed rules", blocks=True)
        elif not override.allowed_by_spec:
            found.add("override", "refused", f"{who} refused: the spec does not allow "
                      "overrides (set gate.allow_override: true to permit them)", blocks=True)
        elif not override.actor.strip() or not override.reason.strip():
            found.add("override", "refused", f"{who} refused: an override needs both an "
                      "actor and a reason", blocks=True)
        else:
            found.add("override", Outcome.PASS, f"released by override of {override.actor}: "
                      f"{override.reason}", blocks=False)
            release = overridden = True
    return GateDecision(
        release=release, reasons=tuple(found.reasons), checks=tuple(found.checks),
        overridden=overridden, allow_warn=allow_warn,
        eval_verdict=verdict["verdict"] if verdict else None,
        quality_verdict=quality["verdict"] if quality else None,
        evidence=(Evidence("quality", str(qpath), sha256_file(qpath) if qpath.is_file() else None),
                  Evidence("verdict", str(vpath), sha256_file(vpath) if vpath.is_file() else None)),
        eval_rules=_summary(verdict["rules"]) if verdict else (),
        quality_rules=_summary(quality["rules"]) if quality else (), override=override,
    )


def _rule_line(kind: str, rule: dict[str, Any], allow_warn: bool) -> str:
    where = f", suite {rule['suite']}" if rule.get("suite") else ""
    threshold = " ".join(x for x in (rule.get("comparison") or "",
                                     "none" if rule.get("threshold") is None
                                     else _num(rule["threshold"])) if x)
    measured = "none" if rule.get("value") is None else _num(rule["value"])
    outcome = str(rule.get("outcome"))
    if outcome == Outcome.WARN:
        outcome += " (allowed: allow_warn)" if allow_warn else " (blocks: allow_warn is false)"
    if rule.get("skipped"):
        outcome += " (skipped)"
    return f"{kind} rule {rule.get('rule')}{where}: threshold {threshold}, measured {measured}" \
           f" -> {outcome}"


def log_lines(decision: GateDecision, baseline: str | None = None, *,
              compare_to_release: bool = False) -> list[str]:
    """The decision for a task log: each rule and check with threshold, value and outcome.

    `baseline` names the release the evaluation compared with ("smoke-cpu r0001"); with
    `compare_to_release` and no baseline, the log says there was no release to compare with.
    """
    lines = [_rule_line("eval", r, decision.allow_warn) for r in decision.eval_rules]
    lines += [_rule_line("dataset", r, decision.allow_warn) for r in decision.quality_rules]
    # rule checks repeat the rules above; the others (verdicts, evidence, override) do not
    lines += [f"check {c.check} -> {c.outcome}: {c.detail}" for c in decision.checks
              if not c.check.startswith(("eval_rule:", "quality_rule:"))]
    if baseline is not None:
        lines.append(f"compared with release {baseline}")
    elif compare_to_release:
        lines.append("no earlier release: comparison skipped")
    if decision.overridden and decision.override is not None:
        lines.append(f"gate decision: release, by override of {decision.override.actor} "
                     f"({decision.override.reason}); lifted: " + " | ".join(decision.reasons))
    elif decision.release:
        lines.append("gate decision: release")
    else:
        count = len(decision.reasons)
        lines.append(f"gate decision: block, {count} reason{'s' if count != 1 else ''}: "
                     + " | ".join(decision.reasons))
    return lines


def write_decision(decision: GateDecision, path: str | Path) -> Path:
    """Write gate_decision.json (schemas/gate_decision.schema.json) atomically."""
    doc = decision.as_dict()
    schemas.check(doc, "gate_decision", str(path))
    atomic.write_json(path, doc)
    return Path(path)


def read_decision(path: str | Path) -> GateDecision:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: gate decision not found; run the release gate first")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: gate decision is not valid JSON ({exc}); rerun the "
                             "gate") from None
    try:
        schemas.check(doc, "gate_decision", str(path))
    except SpecError as exc:
        raise IntegrityError(f"{exc}\n{path}: not a valid gate decision; rerun the gate") from None
    decision = GateDecision.from_dict(doc)
    if decision.decision_id != doc["decision_id"]:
        raise IntegrityError(f"{path}: decision_id {doc['decision_id']} does not match its "
                             "content; the file was edited. Rerun the gate")
    return decision


def record_block(decision: GateDecision, profile: str, dag_id: str, run_id: str, *,
                 try_number: int | None = None, actor: str | None = None,
                 root: str | Path | None = None) -> dict[str, Any]:
    """Append the `blocked` record to <releases_root>/<profile>/blocked.jsonl (once)."""
    from peftflow.release import registry

    return registry.record_block(decision, profile, dag_id, run_id, try_number=try_number,
                                 actor=actor, root=root)


def audit_event(decision: GateDecision, *, dag_id: str, run_id: str, task_id: str,
                try_number: int | None = None, actor: str | None = None,
                note: str | None = None, duration_s: float | None = None) -> dict[str, Any]:
    """The audit event of a decision (gate_passed / gate_blocked / gate_override)."""
    kind = "gate_override" if decision.overridden else \
        "gate_passed" if decision.release else "gate_blocked"
    details: dict[str, Any] = {
        "decision_id": decision.decision_id, "reasons": list(decision.reasons),
        "eval_verdict": decision.eval_verdict, "quality_verdict": decision.quality_verdict,
        "allow_warn": decision.allow_warn,
        "failed_checks": [asdict(c) for c in decision.checks if c.outcome != Outcome.PASS],
    }
    if decision.override is not None:
        details["override"] = asdict(decision.override)
    return {
        "event": kind, "dag_id": dag_id, "run_id": run_id, "task_id": task_id,
        "try_number": try_number, "actor": actor, "note": note, "stage": "release_gate",
        "duration_s": duration_s, "verdict": "release" if decision.release else "blocked",
        "outcome": "overridden" if decision.overridden else
        "passed" if decision.release else "blocked",
        "inputs": [{"name": e.name, "sha256": e.sha256} for e in decision.evidence if e.sha256],
        "details": details,
    }
