"""The operational audit trail: an append-only JSONL file whose events form a hash chain.

Each line is one event in canonical JSON (sorted keys, compact separators). `hash` is the
SHA-256 of the canonical JSON of the event without `hash`; `prev_hash` is the previous
line's hash ("0"*64 on line 1). Editing, removing or reordering any line breaks the chain,
and `verify()` names the line. Writers in parallel processes (LocalExecutor) serialise on
an flock'ed sidecar `<log>.lock`; a sidecar `<log>.head` remembers the last event so that
events cut off the end of the file are detected too.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftflow import atomic, schemas, settings
from peftflow.errors import IntegrityError, ResourceError
from peftflow.hashing import sha256_bytes
from peftflow.status import utc_now

GENESIS = "0" * 64
LOCK_TIMEOUT_S = 120.0
REDACTED = "***"


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


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def event_hash(doc: dict[str, Any]) -> str:
    return sha256_bytes(canonical({k: v for k, v in doc.items() if k != "hash"}))


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
    """Stamp seq/ts/prev_hash/hash on `doc` (an event without them) and append it."""
    target = log_path(path)
    fields = {k: v for k, v in redact(doc).items() if v is not None}
    fields.pop("hash", None)
    with locked(target):
        last = _last_line(target)
        prev_hash, seq = GENESIS, 1
        if last is not None:
            try:
                prev = json.loads(last)
                prev_hash, seq = prev["hash"], int(prev["seq"]) + 1
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(f"{target}:{_line_count(target)}: the last event is "
                                     "unreadable; run `peftflow audit verify` and move the log "
                                     "aside") from None
        event = {**fields, "seq": seq, "ts": utc_now(), "prev_hash": prev_hash}
        event["hash"] = event_hash(event)
        schemas.check(event, "audit_event", f"{target}:{seq}")
        append_line(target, canonical(event) + b"\n")
        atomic.write_json(Path(f"{target}.head"), {"seq": seq, "hash": event["hash"]})
    return event


def append(event: str | EventKind, *, path: str | Path | None = None,
           **fields: Any) -> dict[str, Any]:
    """Append one event; fields are those of schemas/audit_event.schema.json."""
    return append_event({"event": str(EventKind(event)), **fields}, path)


@dataclass(frozen=True)
class AuditProblem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def _snapshot(target: Path) -> tuple[bytes, bytes | None]:
    """Log and head bytes read under the writers' lock, so no half-written line is seen."""
    def read() -> tuple[bytes, bytes | None]:
        head = Path(f"{target}.head")
        return (target.read_bytes() if target.exists() else b"",
                head.read_bytes() if head.exists() else None)

    if not target.exists():
        return read()
    try:
        with locked(target, timeout=30):
            return read()
    except (OSError, ResourceError):
        return read()  # a read-only copy of a log, or a stuck writer: check what is there


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    complete = data.count(b"\n")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw or number <= complete:
            yield number, raw


def verify(path: str | Path | None = None) -> list[AuditProblem]:
    """Every break in the log's chain, each naming its 1-based line; [] when intact."""
    target = log_path(path)
    name = str(target)
    found: list[AuditProblem] = []
    data, head = _snapshot(target)
    if data and not data.endswith(b"\n"):
        found.append(AuditProblem(name, len(data.split(b"\n")),
                                  "incomplete last line (no newline): the file was cut"))
    prev_hash: str | None = GENESIS
    prev_seq = 0
    by_seq: dict[int, tuple[str, int]] = {}
    for number, raw in _lines(data):
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
        if stored != event_hash(event):
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
        prev_seq = seq if isinstance(seq, int) else prev_seq + 1
        prev_hash = stored if isinstance(stored, str) else None
        if isinstance(seq, int) and isinstance(stored, str):
            by_seq[seq] = (stored, number)
    found.extend(_check_head(target, head, by_seq, len(data.split(b"\n")) - 1))
    return found


def _check_head(
    target: Path, raw: bytes | None, by_seq: dict[int, tuple[str, int]], lines: int
) -> list[AuditProblem]:
    head = Path(f"{target}.head")
    if raw is None:
        return [] if not by_seq else [AuditProblem(str(head), 1, "head file missing: cannot "
                                                   "tell whether events were cut off the end")]
    try:
        mark = json.loads(raw)
        seq, digest = int(mark["seq"]), str(mark["hash"])
    except (ValueError, KeyError, TypeError):
        return [AuditProblem(str(head), 1, "head file unreadable")]
    if seq not in by_seq:
        return [AuditProblem(str(target), lines + 1, f"the log ends before seq {seq} "
                             f"recorded in {head.name}: events were removed from the end")]
    if by_seq[seq][0] != digest:
        return [AuditProblem(str(target), by_seq[seq][1], f"event seq {seq} does not match "
                             f"the hash recorded in {head.name}: the log was rewritten")]
    return []


def events(path: str | Path | None = None, dag_id: str | None = None,
           run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Readable events in file order, optionally of one DAG and/or run (verify() for damage)."""
    target = log_path(path)
    for _number, raw in _lines(target.read_bytes() if target.exists() else b""):
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
