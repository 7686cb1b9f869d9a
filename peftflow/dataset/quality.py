"""Dataset quality rules: each measured value against its threshold, and one verdict.

Rules (see schemas/quality.schema.json): the four record rules (json_object, text_field,
utf8, nul_bytes) share one budget of tolerated invalid records; duplicate_fraction;
doc_length_tokens (warns when too many documents exceed the profile's ctx_len);
document_count (RWKV-PEFT's pad loader needs epoch_steps * micro_bsz documents).
Without a profile, ctx_len and the document requirement are unknown: those checks are
reported as skipped (outcome pass, `skipped: true`) and document_count only asks for one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peftflow.dataset.defaults import DEFAULT_MAX_DUPLICATE_FRACTION
from peftflow.outcome import Outcome

if TYPE_CHECKING:
    from peftflow.dataset.dedup import Duplicates
    from peftflow.dataset.reader import Hits

_RULE_TEXT = {
    "json_object": "lines that are not one JSON object",
    "text_field": "records without a usable text field",
    "utf8": "lines that are not valid UTF-8",
    "nul_bytes": "records with NUL bytes",
}


_RANK = {Outcome.PASS: 0, Outcome.WARN: 1, Outcome.FAIL: 2}


@dataclass(frozen=True)
class Thresholds:
    max_invalid_records: int = 0
    max_duplicate_fraction: float = DEFAULT_MAX_DUPLICATE_FRACTION
    max_over_ctx_fraction: float = 0.5
    max_offenders: int = 10
    allow_warn: bool = True


@dataclass(frozen=True)
class ProfileLimits:
    """What a training profile demands of the data."""

    name: str
    ctx_len: int
    epoch_steps: int
    micro_bsz: int

    @property
    def documents_needed(self) -> int:
        return self.epoch_steps * self.micro_bsz


@dataclass(frozen=True)
class Measurements:
    records: int
    documents: int
    tokens: int  # written to .bin, one EOD per document included
    invalid: dict[str, Hits]
    duplicates: Duplicates
    length_min: int  # text tokens per document, EOD excluded
    length_max: int
    length_mean: float
    over_ctx: Hits

    @property
    def invalid_records(self) -> int:
        return sum(h.count for h in self.invalid.values())


@dataclass(frozen=True)
class RuleResult:
    rule: str
    threshold: float | None
    value: float | None
    outcome: Outcome
    message: str
    offending_lines: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    skipped: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "rule": self.rule, "threshold": self.threshold, "value": self.value,
            "outcome": str(self.outcome), "message": self.message,
            "offending_lines": self.offending_lines, "examples": self.examples,
            "skipped": self.skipped,
        }
        if self.details:
            doc["details"] = self.details
        return doc


@dataclass(frozen=True)
class Report:
    verdict: Outcome
    rules: list[RuleResult]
    reasons: list[str]


def _lines(lines: list[int]) -> str:
    return ", ".join(str(n) for n in lines)


def _record_rule(rule: str, hits: Hits, total: int, th: Thresholds) -> RuleResult:
    lines = [n for n, _ in hits.examples]
    examples = [f"line {n}: {detail}" for n, detail in hits.examples]
    if not hits.count:
        return RuleResult(rule, th.max_invalid_records, 0, Outcome.PASS, f"no {_RULE_TEXT[rule]}")
    what = f"{hits.count} {_RULE_TEXT[rule]} (first: {examples[0]})"
    if total > th.max_invalid_records:
        return RuleResult(rule, th.max_invalid_records, hits.count, Outcome.FAIL,
                          f"{what}; {total} invalid records in all, max_invalid_records is "
                          f"{th.max_invalid_records}: fix them and register a new version, or "
                          "tolerate them with --max-invalid-records (they are then left out)",
                          lines, examples)
    return RuleResult(rule, th.max_invalid_records, hits.count, Outcome.WARN,
                      f"{what}; tolerated by max_invalid_records {th.max_invalid_records} and "
                      "left out of the binidx", lines, examples)


def _duplicates(m: Measurements, th: Thresholds) -> RuleResult:
    dup = m.duplicates
    fraction = round(dup.count / m.documents, 6) if m.documents else 0.0
    lines = [line for line, _ in dup.examples]
    examples = [f"line {line} repeats line {first}" for line, first in dup.examples]
    text = f"{dup.count} of {m.documents} documents repeat an earlier document's exact text"
    if fraction > th.max_duplicate_fraction:
        return RuleResult("duplicate_fraction", th.max_duplicate_fraction, fraction,
                          Outcome.FAIL, f"{text} ({fraction:.2%}), more than "
                          f"{th.max_duplicate_fraction:.2%}: deduplicate (keep the first "
                          "occurrence) or raise --max-duplicate-fraction", lines, examples)
    return RuleResult("duplicate_fraction", th.max_duplicate_fraction, fraction, Outcome.PASS,
                      f"{text} ({fraction:.2%})", lines, examples)


def _lengths(m: Measurements, th: Thresholds, limits: ProfileLimits | None) -> RuleResult:
    details: dict[str, Any] = {"min": m.length_min, "max": m.length_max,
                               "mean": round(m.length_mean, 2)}
    span = f"documents have {m.length_min}..{m.length_max} tokens (mean {m.length_mean:.1f})"
    if limits is None:
        return RuleResult("doc_length_tokens", None, None, Outcome.PASS,
                          f"{span}; skipped the ctx_len check: no --profile given",
                          skipped=True, details=details)
    details.update(ctx_len=limits.ctx_len, over_ctx=m.over_ctx.count)
    fraction = round(m.over_ctx.count / m.documents, 6) if m.documents else 0.0
    lines = [n for n, _ in m.over_ctx.examples]
    examples = [f"line {n}: {detail}" for n, detail in m.over_ctx.examples]
    text = (f"{span}; {m.over_ctx.count} ({fraction:.2%}) are longer than ctx_len "
            f"{limits.ctx_len} of profile {limits.name}")
    if fraction > th.max_over_ctx_fraction:
        return RuleResult("doc_length_tokens", th.max_over_ctx_fraction, fraction, Outcome.WARN,
                          f"{text}, more than {th.max_over_ctx_fraction:.2%}: the pad loader "
                          "truncates them, so their ends are never trained on; raise ctx_len "
                          "or split long documents", lines, examples, details=details)
    return RuleResult("doc_length_tokens", th.max_over_ctx_fraction, fraction, Outcome.PASS,
                      text, lines, examples, details=details)


def _count(m: Measurements, limits: ProfileLimits | None) -> RuleResult:
    if limits is None:
        ok = m.documents >= 1
        return RuleResult("document_count", 1, m.documents, Outcome.PASS if ok else Outcome.FAIL,
                          f"{m.documents} valid documents"
                          + ("" if ok else ": nothing to train on")
                          + "; skipped the profile requirement (epoch_steps * micro_bsz): "
                          "no --profile given", skipped=True)
    need = limits.documents_needed
    if m.documents >= need:
        return RuleResult("document_count", need, m.documents, Outcome.PASS,
                          f"{m.documents} valid documents, profile {limits.name} needs {need} "
                          f"(epoch_steps {limits.epoch_steps} * micro_bsz {limits.micro_bsz})")
    fit = m.documents // limits.micro_bsz
    return RuleResult("document_count", need, m.documents, Outcome.FAIL,
                      f"{m.documents} valid documents, but profile {limits.name} needs "
                      f"epoch_steps {limits.epoch_steps} * micro_bsz {limits.micro_bsz} = {need}: "
                      f"RWKV-PEFT's pad loader reads documents 0..{need - 1} every epoch and "
                      f"raises IndexError with fewer. Lower epoch_steps to at most {fit} (or "
                      "lower micro_bsz), or add data")


def evaluate(m: Measurements, th: Thresholds, limits: ProfileLimits | None) -> Report:
    """Apply every rule; the verdict is the worst outcome."""
    # Here, not at the top: the spec model imports this module for its default, and the
    # reader would bring numpy and msgspec into every DAG parse.
    from peftflow.dataset.reader import RECORD_RULES, Hits

    total = m.invalid_records
    rules = [_record_rule(rule, m.invalid.get(rule, Hits()), total, th) for rule in RECORD_RULES]
    rules += [_duplicates(m, th), _lengths(m, th, limits), _count(m, limits)]
    verdict = max((r.outcome for r in rules), key=_RANK.__getitem__)
    reasons = [
        f"{r.outcome}: {r.rule}: {r.message}"
        + (f" [lines {_lines(r.offending_lines)}]" if r.offending_lines else "")
        for r in rules if r.outcome != Outcome.PASS
    ]
    if m.records == 0:
        reasons.insert(0, "fail: the data file has no records")
    return Report(verdict, rules, reasons)
