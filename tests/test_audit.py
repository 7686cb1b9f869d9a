"""The audit trail: hash chain, tamper detection by line, concurrent writers, redaction."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.errors import IntegrityError, SpecError
from peftflow.store import audit, audit_verify


def _fill(log: Path, count: int = 5) -> list[dict]:
    return [
        audit.append("task_succeeded", path=log, dag_id="smoke", run_id=f"manual__{i}",
                     task_id="train_adapter", try_number=1, actor="scheduler",
                     stage="train_adapter", duration_s=12.5 + i, outcome="success",
                     outputs=[{"name": "adapter", "sha256": "ab" * 32}],
                     details={"step": i * 1000 + 123})
        for i in range(count)
    ]


def _lines(log: Path) -> list[bytes]:
    return log.read_bytes().split(b"\n")[:-1]


def test_appended_events_chain_and_verify_clean(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    written = _fill(log)
    assert [e["seq"] for e in written] == [1, 2, 3, 4, 5]
    assert written[0]["prev_hash"] == "0" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(written))
    assert audit_verify.verify(log) == []
    assert list(audit.events(log)) == written


def test_each_line_is_its_canonical_json(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 2)
    for raw in _lines(log):
        event = json.loads(raw)
        assert audit.canonical(event) == raw
        assert event["hash"] == audit.event_hash(event)


def test_editing_one_digit_mid_line_names_that_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log)
    data = bytearray(log.read_bytes())
    line3 = data.index(b'"step":2123')
    data[line3 + len(b'"step":2')] = ord("9")  # 2123 -> 2923, on line 3
    log.write_bytes(bytes(data))
    problems = audit_verify.verify(log)
    assert problems, "an edited digit went unnoticed"
    assert {p.line for p in problems} == {3}
    assert "hash mismatch" in str(problems[0])
    assert str(problems[0]).startswith(f"{log}:3: ")


@pytest.mark.parametrize("line_index", [0, 2, 4])
def test_editing_any_single_byte_is_detected_on_its_line(tmp_path: Path, line_index: int) -> None:
    """Every byte position of a line, flipped one at a time, is reported on that line."""
    log = tmp_path / "audit.jsonl"
    _fill(log)
    original = log.read_bytes()
    lines = original.split(b"\n")
    start = sum(len(x) + 1 for x in lines[:line_index])
    for offset in range(len(lines[line_index])):
        data = bytearray(original)
        data[start + offset] = ord("x") if data[start + offset] != ord("x") else ord("y")
        log.write_bytes(bytes(data))
        problems = audit_verify.verify(log)
        assert problems and problems[0].line == line_index + 1, (offset, problems)


def test_exponent_case_change_is_caught_by_canonical_form(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    audit.append("task_started", path=log, duration_s=1e-05)
    raw = log.read_bytes()
    assert b"1e-05" in raw
    log.write_bytes(raw.replace(b"1e-05", b"1E-05"))
    assert [p.line for p in audit_verify.verify(log)] == [1]


def test_deleted_line_is_detected_at_the_following_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log)
    lines = _lines(log)
    log.write_bytes(b"\n".join(lines[:2] + lines[3:]) + b"\n")
    problems = audit_verify.verify(log)
    assert {p.line for p in problems} == {3}
    assert any("prev_hash" in p.message for p in problems)
    assert any("seq 4 follows 2" in p.message for p in problems)


def test_swapped_lines_are_detected(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.write_bytes(b"\n".join(lines) + b"\n")
    assert {p.line for p in audit_verify.verify(log)} >= {2, 3}


def test_truncated_mid_line_is_detected(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log)
    data = log.read_bytes()
    log.write_bytes(data[:-40])
    problems = audit_verify.verify(log)
    assert [p.line for p in problems][:1] == [5]
    assert any("incomplete last line" in p.message for p in problems)


def test_removed_last_events_are_detected_through_the_head(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log)
    lines = _lines(log)
    log.write_bytes(b"\n".join(lines[:3]) + b"\n")
    problems = audit_verify.verify(log)
    assert len(problems) == 1
    assert "ends before seq 5" in problems[0].message and problems[0].line == 4


def test_a_log_emptied_or_stripped_of_its_head_is_detected(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    head = Path(f"{log}.head")
    saved = head.read_bytes()
    head.unlink()
    assert [p.message for p in audit_verify.verify(log)] == [
        "head file missing: cannot tell whether events were cut off the end"]
    head.write_bytes(saved)
    log.write_bytes(b"")
    assert "ends before seq 3" in audit_verify.verify(log)[0].message


def test_append_refuses_to_extend_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 2)
    log.write_bytes(log.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match=r"audit\.jsonl:2: the last line is incomplete"):
        audit.append("task_started", path=log)


def _writer(log: str, worker: int, count: int) -> None:
    for i in range(count):
        audit.append("task_started", path=log, dag_id="load", run_id=f"w{worker}",
                     task_id=f"t{i}", try_number=1, actor="scheduler")


def test_concurrent_processes_never_interleave_or_lose_events(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(log), w, 25)) for w in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    events = list(audit.events(log))
    assert len(events) == 200
    assert [e["seq"] for e in events] == list(range(1, 201))
    assert audit_verify.verify(log) == []
    per_worker = {f"w{w}": 0 for w in range(8)}
    for event in events:
        per_worker[event["run_id"]] += 1
    assert set(per_worker.values()) == {25}


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"password": "hunter2"}, {"password": "***"}),
        ({"api_key": "k", "apiKey": "k", "API-KEY": "k"},
         {"api_key": "***", "apiKey": "***", "API-KEY": "***"}),
        ({"Authorization": "Bearer abc"}, {"Authorization": "***"}),
        ({"conn": {"client_secret": "s", "access_token": "t"}},
         {"conn": {"client_secret": "***", "access_token": "***"}}),
        ({"tokens": 4096, "tokenizer": "world", "max_tokens": 3},
         {"tokens": 4096, "tokenizer": "world", "max_tokens": 3}),
        ({"cmd": "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1'"},
         {"cmd": "curl -H 'Authorization: Bearer ***'"}),
    ],
)
def test_secrets_are_never_written(tmp_path: Path, details: dict, expected: dict) -> None:
    log = tmp_path / "audit.jsonl"
    audit.append("trigger_received", path=log, actor="alice", details=details,
                 note="run with password=hunter2 please")
    text = log.read_text(encoding="utf-8")
    assert "hunter2" not in text and "eyJhbGci" not in text
    event = next(audit.events(log))
    assert event["details"] == expected
    assert event["note"] == "run with password=*** please"
    assert audit_verify.verify(log) == []


def test_unknown_event_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task_exploded"):
        audit.append("task_exploded", path=tmp_path / "a.jsonl")
    with pytest.raises(SpecError, match=r"\$\.try_number"):
        audit.append_event({"event": "task_started", "try_number": "one"}, tmp_path / "a.jsonl")
    assert not (tmp_path / "a.jsonl").exists()


def test_events_filter_by_dag_and_run(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    audit.append("task_started", path=log, dag_id="other", run_id="manual__1")
    assert [e["seq"] for e in audit.events(log, dag_id="smoke")] == [1, 2, 3]
    assert [e["seq"] for e in audit.events(log, run_id="manual__1")] == [2, 4]
    assert [e["seq"] for e in audit.events(log, dag_id="other", run_id="manual__1")] == [4]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftflow.cli.main", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_verify_reports_ok_then_the_edited_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 4)
    ok = _cli("audit", "verify", "--log", str(log))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: 4 events, chain intact")
    data = bytearray(log.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 30] ^= 0x01
    log.write_bytes(bytes(data))
    bad = _cli("audit", "verify", "--log", str(log))
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"{log}:2: ")


def test_cli_show_filters_and_prints_json(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _fill(log, 3)
    shown = _cli("audit", "show", "--log", str(log), "--run", "manual__2", "--json")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["seq"] == 3
    table = _cli("audit", "show", "--log", str(log), "--dag", "smoke")
    assert table.stdout.count("task_succeeded") == 3
    assert "smoke/manual__0/train_adapter try 1" in table.stdout
