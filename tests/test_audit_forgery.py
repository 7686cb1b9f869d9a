"""Forgeries by someone who can write the audit folder but not read the key are all detected.

The attacker here knows the format: they can recompute every hash and rewrite the head, but
they cannot compute a MAC and cannot write the key's directory (where the anchor lives).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.errors import ConfigError
from peftflow.store import audit, audit_verify
from peftflow.store import audit_key as auditkey


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configured audit log with its own key, in a directory apart from the log's."""
    target = tmp_path / "audit" / "audit.jsonl"
    monkeypatch.setenv("PEFTFLOW_AUDIT_LOG", str(target))
    monkeypatch.setenv("PEFTFLOW_AUDIT_KEY", str(tmp_path / "home" / "peftflow-audit.key"))
    return target


def _fill(log: Path, count: int = 5, start: int = 0) -> list[dict]:
    return [audit.append("task_succeeded", path=log, dag_id="smoke", run_id=f"manual__{i}",
                         task_id="train_adapter", try_number=1, actor="scheduler")
            for i in range(start, start + count)]


def _lines(log: Path) -> list[bytes]:
    return log.read_bytes().split(b"\n")[:-1]


def _head(log: Path) -> Path:
    return Path(f"{log}.head")


def _rewrite_head(log: Path) -> None:
    """What an attacker does after changing the log: point the head at its new last event."""
    last = json.loads(_lines(log)[-1])
    head = json.loads(_head(log).read_bytes())
    head.update(seq=last["seq"], hash=last["hash"])  # the old MAC stays: they cannot make one
    _head(log).write_text(json.dumps(head))


def _forge(prev: dict, fields: dict, mac: str | None) -> dict:
    event = {**fields, "seq": prev["seq"] + 1, "ts": prev["ts"], "prev_hash": prev["hash"]}
    if mac is not None:
        event.update(key_id=prev["key_id"], mac=mac)
    event["hash"] = audit.event_hash(event)
    return event


OVERRIDE = {"event": "gate_override", "dag_id": "smoke", "run_id": "manual__9",
            "task_id": "release_gate", "actor": "mallory", "verdict": "released",
            "details": {"reason": "looked fine to me"}}


def _messages(log: Path) -> list[str]:
    return [str(p) for p in audit_verify.verify(log)]


@pytest.mark.parametrize("mac", [None, "ab" * 32, "copied"], ids=["no-mac", "random", "copied"])
def test_an_appended_forged_gate_override_is_named_by_its_line(log: Path, mac: str | None) -> None:
    _fill(log)
    prev = json.loads(_lines(log)[-1])
    forged = _forge(prev, OVERRIDE, prev["mac"] if mac == "copied" else mac)
    with open(log, "ab") as handle:
        handle.write(audit.canonical(forged) + b"\n")
    _rewrite_head(log)
    problems = audit_verify.verify(log)
    assert problems[0].line == 6 and problems[0].file == str(log), problems
    assert ("no mac" if mac is None else "mac does not verify") in problems[0].message
    assert any("head's MAC does not verify" in m for m in _messages(log))


@pytest.mark.parametrize("head", ["rewritten", "replayed"])
def test_deleted_last_events_with_a_rewritten_head_are_caught_by_the_anchor(
        log: Path, head: str) -> None:
    _fill(log, 3)
    genuine_head_at_3 = _head(log).read_bytes()
    _fill(log, 2, start=3)
    log.write_bytes(b"\n".join(_lines(log)[:3]) + b"\n")
    if head == "replayed":  # a head the attacker saved earlier: its MAC is genuine
        _head(log).write_bytes(genuine_head_at_3)
    else:
        _rewrite_head(log)
    messages = _messages(log)
    anchor = auditkey.anchor_path(auditkey.key_path(), log)
    assert f"{log}:4: the log ends at seq 3 but the anchor {anchor} records seq 5" in \
        "\n".join(messages), messages
    assert len(messages) == (1 if head == "replayed" else 2), messages


def test_an_older_head_swapped_in_is_named(log: Path) -> None:
    _fill(log, 3)
    older = _head(log).read_bytes()
    _fill(log, 2, start=3)
    _head(log).write_bytes(older)
    assert _messages(log) == [f"{log}:4: audit.jsonl.head records seq 3 but the log goes on to "
                              "seq 5: an older head was put back, or a writer died before "
                              "updating it"]


def test_a_wiped_log_and_head_are_named_by_the_anchor_even_after_later_appends(
        log: Path) -> None:
    _fill(log)
    log.unlink()
    _head(log).unlink()
    anchor = auditkey.anchor_path(auditkey.key_path(), log)
    assert _messages(log) == [f"{log}:1: the log is empty but the anchor {anchor} records "
                              f"seq 5 (hash {json.loads(anchor.read_bytes())['hash'][:12]}...): "
                              "the log and its head were wiped or replaced"]
    cli = _cli("audit", "verify")
    assert cli.returncode == 1 and "the log is empty but the anchor" in cli.stdout, cli
    _fill(log, 2)  # the deployment carries on; the next writer records what it found
    messages = _messages(log)
    assert len(messages) == 1 and messages[0].startswith(f"{log}:1: at "), messages
    assert "found the log empty where the anchor" in messages[0]
    assert "recorded seq 5" in messages[0]


def test_a_log_replaced_by_a_shorter_forged_one_is_named(log: Path) -> None:
    _fill(log)
    first = _forge({"seq": 0, "ts": "2026-01-01T00:00:00Z", "hash": "0" * 64},
                   {"event": "run_started", "dag_id": "smoke"}, None)
    log.write_bytes(audit.canonical(first) + b"\n")
    _head(log).write_text(json.dumps({"seq": 1, "hash": first["hash"]}))
    messages = "\n".join(_messages(log))
    assert f"{log}:2: the log ends at seq 1 but the anchor" in messages, messages


def test_an_edited_middle_line_with_the_chain_recomputed_is_still_named(log: Path) -> None:
    _fill(log)
    events = [json.loads(raw) for raw in _lines(log)]
    events[2]["actor"] = "mallory"
    for i in range(2, 5):  # recompute every hash after the edit, as an attacker would
        events[i]["prev_hash"] = events[i - 1]["hash"]
        events[i]["hash"] = audit.event_hash(events[i])
    log.write_bytes(b"".join(audit.canonical(e) + b"\n" for e in events))
    _rewrite_head(log)
    problems = audit_verify.verify(log)
    assert str(problems[0]).startswith(f"{log}:3: mac does not verify"), problems
    assert [p.line for p in problems if "mac does not verify" in p.message] == [3, 4, 5]


def test_a_legitimate_log_verifies_across_a_key_rotation_and_a_restart(log: Path) -> None:
    _fill(log, 3)
    rotation = audit.rotate_key(log, actor="ops")
    _fill(log, 3, start=3)
    events = list(audit.events(log))
    old, new = rotation["details"]["from_key"], rotation["details"]["to_key"]
    assert old != new and rotation["key_id"] == old  # signed by the key it retires
    assert {e["key_id"] for e in events[:4]} == {old} and {e["key_id"] for e in events[4:]} == {new}
    assert audit_verify.verify(log) == []
    keyfile = auditkey.key_path()
    for private in (keyfile, auditkey.ring_path(keyfile)):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # A new process (settings read afresh) appends and verifies the same log.
    code = ("from peftflow.store import audit, audit_verify; "
            "audit.append('run_finished', dag_id='smoke'); "
            "assert audit_verify.verify() == []")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    ok = _cli("audit", "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 8 events, chain intact"), ok


def test_an_event_signed_with_a_retired_key_after_its_rotation_is_named(log: Path) -> None:
    _fill(log, 2)
    old_id = audit.rotate_key(log)["details"]["from_key"]
    ring = json.loads(auditkey.ring_path(auditkey.key_path()).read_bytes())["keys"]
    leaked = auditkey.key_from_hex(ring[old_id], Path("leaked"))
    prev = json.loads(_lines(log)[-1])
    forged = {**OVERRIDE, "seq": prev["seq"] + 1, "ts": prev["ts"], "prev_hash": prev["hash"],
              "key_id": leaked.id}
    forged["mac"] = leaked.mac("event", forged)
    forged["hash"] = audit.event_hash(forged)
    with open(log, "ab") as handle:
        handle.write(audit.canonical(forged) + b"\n")
    problems = audit_verify.verify(log)
    assert problems[0].line == 4 and "which the rotation on line 3 retired" in problems[0].message


def test_a_group_or_world_readable_key_is_refused_with_the_fix(log: Path) -> None:
    _fill(log, 1)
    keyfile = auditkey.key_path()
    os.chmod(keyfile, 0o644)
    with pytest.raises(ConfigError, match=rf"{keyfile}: mode -rw-r--r-- .* run `chmod 600 "):
        audit.append("task_started", path=log)
    assert len(_lines(log)) == 1
    done = _cli("audit", "verify")
    assert done.returncode != 0 and f"chmod 600 {keyfile}" in done.stderr, done


def test_a_key_inside_the_audit_folder_is_refused(log: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTFLOW_AUDIT_KEY", str(log.parent / "peftflow-audit.key"))
    with pytest.raises(ConfigError, match="inside the audit folder"):
        audit.append("task_started", path=log)


def test_init_key_creates_an_owner_only_key_once_and_never_replaces_it(log: Path) -> None:
    first = _cli("audit", "init-key")
    assert first.returncode == 0 and first.stdout.startswith("created audit key"), first
    keyfile = auditkey.key_path()
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    before = keyfile.read_bytes()
    again = _cli("audit", "init-key")
    assert again.returncode == 0 and again.stdout.startswith("kept the existing audit key")
    assert keyfile.read_bytes() == before


def test_events_written_before_keyed_audit_are_noted_not_failed(log: Path) -> None:
    prev: dict = {"seq": 0, "ts": "2026-01-01T00:00:00Z", "hash": "0" * 64}
    legacy = []
    for i in range(3):
        prev = _forge(prev, {"event": "task_started", "dag_id": "old", "run_id": f"r{i}"}, None)
        legacy.append(prev)
    log.parent.mkdir(parents=True)
    log.write_bytes(b"".join(audit.canonical(e) + b"\n" for e in legacy))
    _head(log).write_text(json.dumps({"seq": 3, "hash": prev["hash"]}))
    report = audit_verify.check(log)
    assert report.problems == ()
    assert report.notes == (f"{log}: lines 1-3 are unkeyed (written before keyed audit); they "
                            "cannot prove they were not forged",)
    _fill(log, 2)  # the first keyed writer anchors the old lines too
    assert audit_verify.verify(log) == []
    forged = _forge(json.loads(_lines(log)[-1]), OVERRIDE, None)
    with open(log, "ab") as handle:
        handle.write(audit.canonical(forged) + b"\n")
    assert audit_verify.verify(log)[0].line == 6


def test_a_copy_of_a_log_verifies_with_a_note_but_the_configured_log_needs_its_anchor(
        log: Path, tmp_path: Path) -> None:
    _fill(log, 3)
    copy = tmp_path / "copy" / "audit.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(log.read_bytes())
    Path(f"{copy}.head").write_bytes(_head(log).read_bytes())
    report = audit_verify.check(copy)
    assert report.problems == () and "no anchor" in report.notes[0]
    auditkey.anchor_path(auditkey.key_path(), log).unlink()
    assert "no anchor for the configured audit log" in _messages(log)[0]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftflow.cli.main", *args],
                          capture_output=True, text=True, timeout=60, check=False)
