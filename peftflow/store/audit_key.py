"""The audit trail's secret: the HMAC key, the keyring of retired keys and the anchors.

All three live in one directory outside the audit folder (default AIRFLOW_HOME, setting
PEFTFLOW_AUDIT_KEY), readable by the deployment's user only:

- `peftflow-audit.key`: 32 random bytes as hex, mode 0600; signs every event, head and anchor.
- `peftflow-audit.keyring`: the retired keys by id, so events signed before a rotation verify.
- `peftflow-audit.anchors/<log>-<id>.json`: per log, the last seq and hash a writer saw, with
  the writes it found tampered with (`breaks`). Someone who can rewrite the log and its head
  cannot rewrite this copy, so a wiped, cut or rolled-back log is still detected. (The metadata
  DB would be the other natural second store, but Airflow 3 tasks may not write it, and CLI
  commands write audit events too, so a file beside the key is the store every writer reaches.)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftflow import settings
from peftflow.errors import ConfigError, IntegrityError

KEY_BYTES = 32
MAX_BREAKS = 100  # breaks kept in an anchor; each needs a tampering, so this bounds its size


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class Key:
    id: str  # first 16 hex digits of sha256(secret); names the key in events
    secret: bytes = field(repr=False)  # never in a log line or traceback

    def mac(self, domain: str, doc: dict[str, Any]) -> str:
        # The domain keeps an event MAC from passing as a head or anchor MAC.
        return hmac.new(self.secret, domain.encode() + b"\0" + canonical(doc),
                        hashlib.sha256).hexdigest()

    def verifies(self, domain: str, doc: dict[str, Any], mac: object) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(self.mac(domain, doc), mac)


def key_from_hex(text: str, where: Path) -> Key:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise ConfigError(f"{where}: not an audit key ({KEY_BYTES * 2} hex digits); restore it "
                          "from your backup (events it signed verify only with it)")
    return Key(hashlib.sha256(secret).hexdigest()[:16], secret)


def key_path() -> Path:
    """The configured key file (resolved, like every path in settings)."""
    return settings.get().audit_key


def ring_path(key: Path) -> Path:
    return key.with_suffix(".keyring")


def anchor_path(key: Path, log: Path) -> Path:
    """Where the anchor of `log` (a resolved path) lives, beside `key`."""
    # Named by the resolved path: a log swapped for a symlink finds no anchor, and that is
    # reported for the configured log.
    digest = hashlib.sha256(str(log).encode()).hexdigest()[:16]
    return key.with_suffix(".anchors") / f"{log.name}-{digest}.json"


def check_outside(key: Path, log: Path) -> None:
    """Refuse a key kept in the audit folder (both paths resolved): log writers could read it."""
    folder = log.parent
    if key.is_relative_to(folder):
        raise ConfigError(f"{key}: the audit key is inside the audit folder {folder}; anyone "
                          "who can write the log could forge events with it; set "
                          "PEFTFLOW_AUDIT_KEY to a path outside it (default AIRFLOW_HOME)")


def _read_private(path: Path) -> bytes | None:
    """Bytes of an owner-only file (None when missing); a group/world-readable one is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}); the audit key and keyring "
                          "must be plain files owned by the deployment's user, mode 0600") from exc
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise ConfigError(f"{path}: mode {stat.filemode(mode)} lets others read or replace "
                              "the audit key, so they could forge audit events; run "
                              f"`chmod 600 {path}` (and `peftflow audit rotate-key` if someone "
                              "may have copied it)")
        return handle.read()


def _write_private(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write an owner-only file atomically; without `replace`, keep an existing one (False)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic create-if-absent: parallel first writers agree on one key
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # gone after a replace; a spare name after a link


def load_key(path: Path) -> Key | None:
    """The current key, or None when there is none yet."""
    data = _read_private(path)
    return None if data is None else key_from_hex(data.decode("ascii", "replace"), path)


def ensure_key(path: Path) -> tuple[Key, bool]:
    """The current key, created (0600) if missing; True when this call created it."""
    key = load_key(path)
    if key is not None:
        return key, False
    created = _write_private(path, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n",
                             replace=False)
    key = load_key(path)
    if key is None:
        raise ConfigError(f"{path}: the audit key vanished while it was created; retry")
    return key, created


def keyring(path: Path) -> dict[str, Key]:
    """Every key events may be signed with: the retired ones and the current one, by id."""
    ring = ring_path(path)
    data = _read_private(ring)
    keys: dict[str, Key] = {}
    if data is not None:
        try:
            entries = json.loads(data)["keys"]
            keys = {k.id: k for k in (key_from_hex(v, ring) for v in entries.values())}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{ring}: the audit keyring is unreadable; restore it from your "
                              "backup (events signed with retired keys verify only with it)") \
                from None
    current = load_key(path)
    if current is not None:
        keys[current.id] = current
    return keys


def rotate(path: Path) -> tuple[Key, Key]:
    """Retire the current key into the keyring and install a new one; (old, new)."""
    old, _ = ensure_key(path)
    retired = {k.id: k.secret.hex() for k in keyring(path).values()}
    _write_private(ring_path(path), canonical({"keys": retired}) + b"\n", replace=True)
    # Keyring first: a crash before the key is replaced leaves an extra entry, never a lost key.
    _write_private(path, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n", replace=True)
    new = load_key(path)
    if new is None:
        raise ConfigError(f"{path}: the new audit key vanished while it was installed; the old "
                          f"one is in {ring_path(path)}; retry `peftflow audit rotate-key`")
    return old, new


@dataclass(frozen=True)
class Mark:
    """A position in a log: the seq and hash of one event."""

    seq: int
    hash: str

    def short(self) -> str:
        return f"seq {self.seq} (hash {self.hash[:12]}...)"


@dataclass(frozen=True)
class Break:
    """An append that found the log not where the anchor said: tampering seen by a writer."""

    recorded: Mark | None  # None: the anchor itself was unreadable or its MAC wrong
    found: Mark | None  # None: the log was empty or missing
    ts: str


@dataclass(frozen=True)
class Anchor:
    path: Path
    mark: Mark
    breaks: tuple[Break, ...]


def _mark(doc: Any) -> Mark | None:
    return None if doc is None else Mark(int(doc["seq"]), str(doc["hash"]))


def _mark_doc(mark: Mark | None) -> dict[str, Any] | None:
    return None if mark is None else {"seq": mark.seq, "hash": mark.hash}


def read_anchor(path: Path, keys: dict[str, Key]) -> Anchor | None:
    """The anchor at `path` (None when missing); IntegrityError when unreadable or forged."""
    try:
        return parse_anchor(path, path.read_bytes(), keys)
    except FileNotFoundError:
        return None


def parse_anchor(path: Path, raw: bytes, keys: dict[str, Key]) -> Anchor:
    """The anchor in `raw` (read from `path`); IntegrityError when unreadable or forged."""
    try:
        doc = json.loads(raw.split(b"\n", 1)[0])  # ignore a tail left by a cut-short rewrite
        body = {k: v for k, v in doc.items() if k not in ("mac", "key_id")}
        breaks = tuple(Break(_mark(b["recorded"]), _mark(b["found"]), str(b["ts"]))
                       for b in body.get("breaks", []))
        mark = Mark(int(body["seq"]), str(body["hash"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{path}: the audit anchor is unreadable ({exc!r})") from None
    key = keys.get(str(doc.get("key_id")))
    if key is None or not key.verifies("anchor", body, doc.get("mac")):
        raise IntegrityError(f"{path}: the audit anchor's MAC does not verify with any audit "
                             "key: it was written without the key")
    return Anchor(path, mark, breaks)


def write_anchor(path: Path, key: Key, log: Path, mark: Mark, breaks: tuple[Break, ...], *,
                 rewrite: bool) -> None:
    """Record `mark` as the log's last event; `rewrite` for a new anchor or a new break."""
    body = {"log": str(log), "seq": mark.seq, "hash": mark.hash,
            "breaks": [{"recorded": _mark_doc(b.recorded), "found": _mark_doc(b.found),
                        "ts": b.ts} for b in breaks[-MAX_BREAKS:]]}
    data = canonical({**body, "key_id": key.id, "mac": key.mac("anchor", body)}) + b"\n"
    if rewrite:  # rare and worth a durable, atomic write
        _write_private(path, data, replace=True)
        return
    # Every append lands here: one in-place write, no fsync and no rename (each costs about as
    # much as the whole append did before). An anchor left behind by a power cut only lags,
    # and the lines past it still prove themselves by their MACs; readers hold the log's lock.
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def head_doc(key: Key, mark: Mark) -> dict[str, Any]:
    body = {"seq": mark.seq, "hash": mark.hash}
    return {**body, "key_id": key.id, "mac": key.mac("head", body)}
