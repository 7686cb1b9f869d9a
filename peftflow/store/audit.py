"""The operational audit trail: an append-only JSONL file whose events form a keyed hash chain.

Each line is one event in canonical JSON (sorted keys, compact separators). `prev_hash` is the
previous line's hash ("0"*64 on line 1); `mac` is an HMAC-SHA256 of the event (without `mac`
and `hash`) under the audit key named by `key_id` (see auditkey.py); `hash` is the SHA-256 of
the event without `hash`. Editing, removing or reordering any line breaks the chain, and a line
written without the key fails its MAC; `verify()` names the line. Writers in parallel processes
(LocalExecutor) serialise on an flock'ed sidecar `<log>.lock`; under it they append the line
and rewrite the signed sidecar `<log>.head` and the anchor beside the key, so events cut off
the end, or a log and head replaced together, are detected too.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import IntegrityError, ResourceError
from peftflow.store import atomic, schemas
from peftflow.store import audit_key as auditkey
from peftflow.store.audit_key import Key, Mark, canonical
from peftflow.store.hashing import sha256_bytes
from peftflow.store.status_record import utc_now

GENESIS = "0" * 64
LOCK_TIMEOUT_S = 120.0
REDACTED = "***"
_STAMPS = ("seq", "ts", "prev_hash", "key_id", "mac", "hash")  # set by append, never by callers
_logger = logging.getLogger(__name__)


class EventKind(enum.StrEnum):
    TASK_STARTED = "task_started"
    TASK_SUCCEEDED = "task_succeeded"
    TASK_FAILED = "task_failed"
    TASK_RETRY = "task_retry"
    TASK_REUSED = "task_reused"
    TASK_SKIPPED = "task_skipped"
    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    GATE_PASSED = "gate_passed"
    GATE_BLOCKED = "gate_blocked"
    GATE_OVERRIDE = "gate_override"
    RELEASE_PUBLISHED = "release_published"
    RELEASE_NOOP = "release_noop"
    DATASET_REGISTERED = "dataset_registered"
    PROFILE_SWITCHED = "profile_switched"
    TRIGGER_RECEIVED = "trigger_received"
    ORPHAN_STOPPED = "orphan_stopped"
    AUDIT_KEY_ROTATED = "audit_key_rotated"
    NOTIFICATION_SENT = "notification_sent"
    NOTIFICATION_FAILED = "notification_failed"
    TRACKING_LOGGED = "tracking_logged"
    TRACKING_FAILED = "tracking_failed"


# Keys whose values are never written. Split on separators and camelCase first, so that
# "tokens" (a count) and "tokenizer" stay while "api_token" or "accessToken" are redacted.
_SECRET_WORDS = {"password", "passwd", "pwd", "secret", "token", "apikey", "authorization",
                 "credential", "credentials", "cookie", "privatekey", "passphrase"}
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key")}
_SECRET_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_SECRET_ASSIGN = re.compile(r"(?i)\b(password|passwd|token|secret|api[_-]?key)(\s*[=:]\s*)\S+")


def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", key) if w]
    pairs = set(itertools.pairwise(words))
    return bool(_SECRET_WORDS.intersection(words) or _SECRET_PAIRS & pairs
                or key.lower().replace("-", "_") in {"api_key", "apikey"})


def redact(value: Any) -> Any:
    """A copy of `value` with secret-looking keys and credentials in text replaced by ***."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        value = _SECRET_SCHEME.sub(rf"\1\2{REDACTED}", value)
        return _SECRET_ASSIGN.sub(rf"\1\2{REDACTED}", value)
    return value


def event_hash(doc: dict[str, Any]) -> str:
    return sha256_bytes(canonical({k: v for k, v in doc.items() if k != "hash"}))


def mac_body(doc: dict[str, Any]) -> dict[str, Any]:
    """What an event's MAC covers: all of it but `hash` (derived) and `mac` itself."""
    return {k: v for k, v in doc.items() if k not in ("hash", "mac")}


def log_path(path: str | Path | None = None) -> Path:
    return Path(path) if path is not None else settings.get().audit_log


@contextlib.contextmanager
def locked(target: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive flock on `<target>.lock` (never deleted, so no unlink races)."""
    lock = Path(f"{target}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ResourceError(f"{lock}: still locked after {timeout:.0f}s; another "
                                        "writer hangs; retry, or find it with `fuser`") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def append_line(path: Path, line: bytes) -> None:
    """Append one complete line with O_APPEND + fsync; a short write is rolled back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, start)  # leave no torn line behind
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceError(f"{path}: no space left on device; nothing was "
                                    "appended; free space and retry") from exc
            raise
    finally:
        os.close(fd)


def _last_line(path: Path) -> bytes | None:
    """The last line (without newline) read from the tail, or None for an empty file."""
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return None
        tail, pos = b"", end
        while pos > 0 and tail.count(b"\n") < 2:
            step = min(pos, 65536)
            pos -= step
            handle.seek(pos)
            tail = handle.read(step) + tail
    if not tail.endswith(b"\n"):
        raise IntegrityError(f"{path}:{_line_count(path) + 1}: the last line is incomplete (a "
                             "writer died mid-write or the file was cut); run `peftflow audit "
                             "verify`, then move the log aside to start a new one")
    return tail[:-1].rsplit(b"\n", 1)[-1]


def _line_count(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def append_event(doc: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Stamp seq/ts/prev_hash/key_id/mac/hash on `doc` (an event without them) and append it."""
    target = log_path(path)
    fields = {k: v for k, v in redact(doc).items() if v is not None and k not in _STAMPS}
    keyfile = auditkey.key_path()
    where = target.resolve()  # once per append: it names the anchor (messages keep `target`)
    auditkey.check_outside(keyfile, where)
    with locked(target):
        key, _ = auditkey.ensure_key(keyfile)
        return _append_locked(target, where, fields, key, keyfile)


def _append_locked(target: Path, where: Path, fields: dict[str, Any], key: Key,
                   keyfile: Path) -> dict[str, Any]:
    last = _last_event(target)
    prev_hash, seq = (GENESIS, 1) if last is None else (last["hash"], int(last["seq"]) + 1)
    event = {**fields, "seq": seq, "ts": utc_now(), "prev_hash": prev_hash, "key_id": key.id}
    event["mac"] = key.mac("event", event)
    event["hash"] = event_hash(event)
    schemas.check(event, "audit_event", f"{target}:{seq}")
    anchor_file = auditkey.anchor_path(keyfile, where)
    anchor, breaks = _anchor_breaks(target, anchor_file, keyfile, last)
    append_line(target, canonical(event) + b"\n")
    mark = Mark(seq, event["hash"])
    atomic.write_json(Path(f"{target}.head"), auditkey.head_doc(key, mark))
    auditkey.write_anchor(anchor_file, key, where, mark, breaks,
                          rewrite=anchor is None or anchor.breaks != breaks)
    return event


def _last_event(target: Path) -> dict[str, Any] | None:
    last = _last_line(target)
    if last is None:
        return None
    try:
        event = json.loads(last)
    except ValueError:
        event = None
    if isinstance(event, dict) and isinstance(event.get("seq"), int) \
            and isinstance(event.get("hash"), str):
        return event
    raise IntegrityError(f"{target}:{_line_count(target)}: the last event is unreadable; run "
                         "`peftflow audit verify` and move the log aside")


def _anchor_breaks(
    target: Path, anchor_file: Path, keyfile: Path, last: dict[str, Any] | None
) -> tuple[auditkey.Anchor | None, tuple[auditkey.Break, ...]]:
    """The anchor (None if missing or unreadable) and its breaks, plus one if the log is not
    where the anchor left it.

    A writer never refuses to write (that would stop every task); it records what it found,
    so the next append cannot hide a cut or wiped log by moving the anchor on.
    """
    keys = auditkey.keyring(keyfile)
    found = None if last is None else Mark(int(last["seq"]), str(last["hash"]))
    try:
        anchor = auditkey.read_anchor(anchor_file, keys)
    except IntegrityError as exc:
        _logger.warning("%s; recorded in a new anchor", exc)
        return None, (auditkey.Break(None, found, utc_now()),)
    if anchor is None or found == anchor.mark:
        return anchor, () if anchor is None else anchor.breaks
    if found is not None and last is not None and found.seq > anchor.mark.seq \
            and _signed(last, keys):
        return anchor, anchor.breaks  # a writer died before its anchor update; nothing lost
    _logger.warning("%s: the log %s but its anchor %s records %s: events were removed or the log "
                "replaced; recorded for `peftflow audit verify`", target,
                f"ends at {found.short()}" if found else "is empty", anchor_file,
                anchor.mark.short())
    return anchor, (*anchor.breaks, auditkey.Break(anchor.mark, found, utc_now()))


def _signed(event: dict[str, Any], keys: dict[str, Key]) -> bool:
    key = keys.get(str(event.get("key_id")))
    return (key is not None and event.get("hash") == event_hash(event)
            and key.verifies("event", mac_body(event), event.get("mac")))


def append(event: str | EventKind, *, path: str | Path | None = None,
           **fields: Any) -> dict[str, Any]:
    """Append one event; fields are those of schemas/audit_event.schema.json."""
    return append_event({"event": str(EventKind(event)), **fields}, path)


def rotate_key(path: str | Path | None = None, actor: str | None = None) -> dict[str, Any]:
    """Retire the audit key into the keyring, install a new one, and audit that (old key)."""
    target = log_path(path)
    keyfile = auditkey.key_path()
    auditkey.check_outside(keyfile, target.resolve())
    with locked(target), locked(keyfile):
        old, new = auditkey.rotate(keyfile)
        fields = {"event": str(EventKind.AUDIT_KEY_ROTATED), "actor": actor or
                  settings.current_user(), "outcome": "success",
                  "details": {"from_key": old.id, "to_key": new.id}}
        return _append_locked(target, target.resolve(), fields, old, keyfile)


def split_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) of each line; a trailing newline ends the last one."""
    complete = data.count(b"\n")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw or number <= complete:
            yield number, raw


@dataclass(frozen=True)
class AuditProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class AuditReport:
    """What verify found: problems (tampering or damage) and notes (limits of the proof)."""

    problems: tuple[AuditProblem, ...]
    notes: tuple[str, ...]
    events: int


def events(path: str | Path | None = None, dag_id: str | None = None,
           run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Readable events in file order, optionally of one DAG and/or run (verify() for damage)."""
    target = log_path(path)
    for _number, raw in split_lines(target.read_bytes() if target.exists() else b""):
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if dag_id is not None and event.get("dag_id") != dag_id:
            continue
        if run_id is not None and event.get("run_id") != run_id:
            continue
        yield event

