"""Checking an audit log: chain, MACs, head and anchor, each problem naming its line.

What each layer proves (see audit.py and auditkey.py): the hash chain pins the order of the
lines; a line's MAC proves it was written by someone holding the key; the signed head must be
the last event; the anchor beside the key remembers how far the log went, so a log cut, rolled
back or wiped together with its head is found. Problems are tampering or damage; notes are what
the log cannot prove (lines written before keyed audit, a copy without its anchor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import IntegrityError, ResourceError
from peftflow.store import audit_key as auditkey
from peftflow.store import schemas
from peftflow.store.audit import (
    GENESIS,
    AuditProblem,
    AuditReport,
    EventKind,
    event_hash,
    locked,
    log_path,
    mac_body,
    split_lines,
)
from peftflow.store.audit_key import Key, Mark, canonical


@dataclass(frozen=True)
class _Chain:
    by_seq: dict[int, tuple[str, int]]  # seq -> (hash, line)
    last: Mark | None
    lines: int
    keyed_from: int | None  # first line with a MAC


def _snapshot(target: Path, anchor: Path) -> tuple[bytes, bytes | None, bytes | None]:
    """Log, head and anchor bytes read under the writers' lock, so they are of one moment."""
    def read() -> tuple[bytes, bytes | None, bytes | None]:
        head = Path(f"{target}.head")
        return (target.read_bytes() if target.exists() else b"",
                head.read_bytes() if head.exists() else None,
                anchor.read_bytes() if anchor.exists() else None)

    if not target.exists():
        return read()
    try:
        with locked(target, timeout=30):
            return read()
    except (OSError, ResourceError):
        return read()  # a read-only copy of a log, or a stuck writer: check what is there


def _check(target: Path) -> AuditReport:
    """Problems and notes of the log at `target`."""
    keyfile = auditkey.key_path()
    keys = auditkey.keyring(keyfile)
    where = target.resolve()
    anchor_file = auditkey.anchor_path(keyfile, where)
    data, head, anchor = _snapshot(target, anchor_file)
    found: list[AuditProblem] = []
    notes: list[str] = []
    chain = _check_lines(str(target), data, keys, keyfile, found, notes)
    head_mark = _check_head(target, head, chain, keys, found)
    configured = where == settings.get().audit_log.resolve()
    _check_anchor(target, anchor_file, anchor, chain, keys, head_mark, configured, found, notes)
    return AuditReport(tuple(found), tuple(notes), len(chain.by_seq))


def _check_lines(name: str, data: bytes, keys: dict[str, Key], keyfile: Path,
                 found: list[AuditProblem], notes: list[str]) -> _Chain:
    if data and not data.endswith(b"\n"):
        found.append(AuditProblem(name, len(data.split(b"\n")),
                                  "incomplete last line (no newline): the file was cut"))
    prev_hash: str | None = GENESIS
    prev_seq = 0
    by_seq: dict[int, tuple[str, int]] = {}
    unkeyed: list[int] = []
    keyed_from: int | None = None
    retired: dict[str, int] = {}  # key id -> line of the rotation that retired it
    for number, raw in split_lines(data):
        try:
            event = json.loads(raw)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            found.append(AuditProblem(name, number, f"not valid JSON ({exc}): line edited or cut"))
            prev_hash = None  # unknown; do not cascade into the next line
            prev_seq += 1
            continue
        for problem in schemas.problems(event, "audit_event", name):
            found.append(AuditProblem(name, number, f"{problem.path}: {problem.message}"))
        stored = event.get("hash")
        intact = stored == event_hash(event)
        if not intact:
            found.append(AuditProblem(name, number, "hash mismatch: the event was edited"))
        elif canonical(event) != raw:
            found.append(AuditProblem(name, number, "not in canonical form: the line was edited"))
        if prev_hash is not None and event.get("prev_hash") != prev_hash:
            found.append(AuditProblem(name, number, "prev_hash does not match the previous "
                                      "line: a line before it was removed, inserted or moved"))
        seq = event.get("seq")
        if isinstance(seq, int) and seq != prev_seq + 1:
            found.append(AuditProblem(name, number, f"seq {seq} follows {prev_seq}: events "
                                      "were removed, inserted or reordered"))
        if "mac" not in event and keyed_from is None:
            unkeyed.append(number)
        else:
            keyed_from = keyed_from or number
            bad_mac = _mac_problem(event, intact, keys, keyfile, keyed_from, retired)
            if bad_mac:
                found.append(AuditProblem(name, number, bad_mac))
            elif event.get("event") == EventKind.AUDIT_KEY_ROTATED:
                retired[str(event["key_id"])] = number
        prev_seq = seq if isinstance(seq, int) else prev_seq + 1
        prev_hash = stored if isinstance(stored, str) else None
        if isinstance(seq, int) and isinstance(stored, str):
            by_seq[seq] = (stored, number)
    if unkeyed:
        where = f"line {unkeyed[0]} is" if len(unkeyed) == 1 else \
            f"lines {unkeyed[0]}-{unkeyed[-1]} are"
        notes.append(f"{name}: {where} unkeyed (written before keyed audit); they cannot prove "
                     "they were not forged")
    last = max(by_seq, default=0)
    return _Chain(by_seq, Mark(last, by_seq[last][0]) if by_seq else None,
                  data.count(b"\n"), keyed_from)


def _mac_problem(event: dict[str, Any], intact: bool, keys: dict[str, Key], keyfile: Path,
                 keyed_from: int, retired: dict[str, int]) -> str | None:
    if "mac" not in event:
        return (f"no mac, although the events from line {keyed_from} on are keyed: written "
                "without the audit key (forged)")
    kid = str(event.get("key_id"))
    key = keys.get(kid)
    if key is None:
        return (f"key_id {kid} is neither {keyfile} nor in its keyring: forged, or the key was "
                "replaced without `peftflow audit rotate-key` (restore the old key file)")
    if intact and not key.verifies("event", mac_body(event), event.get("mac")):
        return "mac does not verify: the event was written or changed without the audit key"
    if kid in retired:
        return (f"signed with key {kid}, which the rotation on line {retired[kid]} retired: "
                "written with an old key after its rotation (forged)")
    return None


def _check_head(target: Path, raw: bytes | None, chain: _Chain, keys: dict[str, Key],
                found: list[AuditProblem]) -> Mark | None:
    """Check `<log>.head` against the last event; the head's mark when a problem was found."""
    head = Path(f"{target}.head")
    by_seq = chain.by_seq
    if raw is None:
        if by_seq:
            found.append(AuditProblem(str(head), 1, "head file missing: cannot tell whether "
                                      "events were cut off the end"))
        return None
    try:
        doc = json.loads(raw)
        mark = Mark(int(doc["seq"]), str(doc["hash"]))
    except (ValueError, KeyError, TypeError):
        found.append(AuditProblem(str(head), 1, "head file unreadable"))
        return None
    before = len(found)
    if mark.seq not in by_seq:
        found.append(AuditProblem(str(target), chain.lines + 1, f"the log ends before seq "
                                  f"{mark.seq} recorded in {head.name}: events were removed "
                                  "from the end"))
    elif by_seq[mark.seq][0] != mark.hash:
        found.append(AuditProblem(str(target), by_seq[mark.seq][1], f"event seq {mark.seq} does "
                                  f"not match the hash recorded in {head.name}: the log was "
                                  "rewritten"))
    elif chain.last is not None and mark.seq < chain.last.seq:
        found.append(AuditProblem(str(target), by_seq[mark.seq][1] + 1, f"{head.name} records "
                                  f"seq {mark.seq} but the log goes on to seq {chain.last.seq}: "
                                  "an older head was put back, or a writer died before "
                                  "updating it"))
    if "mac" in doc:
        key = keys.get(str(doc.get("key_id")))
        body = {"seq": doc["seq"], "hash": doc["hash"]}
        if key is None or not key.verifies("head", body, doc["mac"]):
            found.append(AuditProblem(str(head), 1, "the head's MAC does not verify with any "
                                      "audit key: it was written without the key"))
    elif chain.keyed_from is not None:
        found.append(AuditProblem(str(head), 1, "the head has no MAC although the log is "
                                  "keyed: it was rewritten without the audit key"))
    return mark if len(found) > before else None


def _check_anchor(target: Path, anchor_file: Path, raw: bytes | None, chain: _Chain,
                  keys: dict[str, Key], head_mark: Mark | None, configured: bool,
                  found: list[AuditProblem], notes: list[str]) -> None:
    """Compare the log with its anchor beside the key, which log-folder writers cannot touch."""
    name = str(target)
    if raw is None:
        if chain.keyed_from is None:
            return  # an empty or pre-keyed log that no keyed writer has touched
        if configured:
            found.append(AuditProblem(str(anchor_file), 1, "no anchor for the configured audit "
                                      "log: it was deleted, the log was replaced by a link, or "
                                      "PEFTFLOW_AUDIT_KEY changed; a cut or replaced log "
                                      "cannot be ruled out"))
        else:
            notes.append(f"{name}: no anchor in {anchor_file.parent} (a copy of a log?): lines "
                         "and head are checked, a cut-off tail only against the head")
        return
    try:
        anchor = auditkey.parse_anchor(anchor_file, raw, keys)
    except IntegrityError as exc:
        found.append(AuditProblem(str(anchor_file), 1, str(exc).split(": ", 1)[1]))
        return
    for brk in anchor.breaks:
        seen = f"at {brk.found.short()}" if brk.found else "empty"
        kept = brk.recorded.short() if brk.recorded else "an unreadable anchor"
        found.append(AuditProblem(name, brk.found.seq + 1 if brk.found else 1, f"at {brk.ts} a "
                                  f"writer found the log {seen} where the anchor "
                                  f"{anchor_file} recorded {kept}: events were removed or the "
                                  "log replaced before that write"))
    mark, last = anchor.mark, chain.last
    if mark == head_mark:
        return  # the head check already reported this very disagreement
    if last is None:
        found.append(AuditProblem(name, 1, f"the log is empty but the anchor {anchor_file} "
                                  f"records {mark.short()}: the log and its head were wiped "
                                  "or replaced"))
    elif mark.seq > last.seq:
        found.append(AuditProblem(name, chain.lines + 1, f"the log ends at seq {last.seq} but "
                                  f"the anchor {anchor_file} records {mark.short()}: events "
                                  "were removed from the end and the head rewritten"))
    elif mark.seq in chain.by_seq and chain.by_seq[mark.seq][0] != mark.hash:
        found.append(AuditProblem(name, chain.by_seq[mark.seq][1], f"event seq {mark.seq} does "
                                  f"not match the anchor {anchor_file}: the log was rewritten"))
    elif mark.seq < last.seq and mark.seq in chain.by_seq:
        after = chain.by_seq[mark.seq][1]
        if not any(p.file == name and p.line > after for p in found):
            # Only a writer that died between its line and the anchor leaves this behind;
            # a forged line past the anchor has already been named by its MAC.
            notes.append(f"{name}: the anchor lags at seq {mark.seq} (a writer died before "
                         "updating it); the lines after it are proven by their MACs")


def verify(path: str | Path | None = None) -> list[AuditProblem]:
    """Every break in the log's chain, MACs, head or anchor, each naming its line; [] if intact."""
    return list(check(path).problems)


def check(path: str | Path | None = None) -> AuditReport:
    """verify() with the notes on what the log cannot prove (unkeyed lines, no anchor)."""
    return _check(log_path(path))
