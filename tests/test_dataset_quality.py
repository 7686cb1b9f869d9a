"""Each dataset quality rule, with a passing and a failing case, through the prepare stage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peftflow import entry
from peftflow.dataset import binidx, register_dataset, tokenizer
from peftflow.dataset.dedup import DuplicateSpool
from peftflow.stages import prepare

ROOT = Path(__file__).resolve().parents[1]


def _texts(n: int, words: int = 5) -> list[str]:
    return [f"Document number {i} says " + " ".join(f"w{i}x{j}" for j in range(words))
            for i in range(n)]


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _records(texts: list[str]) -> list[bytes]:
    return [json.dumps({"text": t}, ensure_ascii=False).encode() for t in texts]


def _profile(tmp_path: Path, epoch_steps: int = 2, micro_bsz: int = 2) -> Path:
    text = (ROOT / "configs/profiles/smoke_cpu.yaml").read_text(encoding="utf-8")
    text = text.replace("epoch_steps: 25", f"epoch_steps: {epoch_steps}")
    text = text.replace("micro_bsz: 4", f"micro_bsz: {micro_bsz}")
    path = tmp_path / "profile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _prepare(tmp_path: Path, lines: list[bytes], *args: str) -> tuple[int, dict[str, Any], Path]:
    data = _write(tmp_path / "train.jsonl", lines)
    manifest, _ = register_dataset(data, "unit", "v1")
    out = tmp_path / "out"
    code = entry.run(prepare.main, ["--manifest", str(manifest), "--out", str(out), *args])
    report = out / "quality.json"
    quality = json.loads(report.read_text()) if report.exists() else {}
    return code, quality, out


def _rule(quality: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in quality["rules"] if r["rule"] == name)


def _assert_failed(code: int, quality: dict[str, Any], out: Path) -> None:
    assert code == 4 and quality["verdict"] == "fail" and quality["allowed"] is False
    assert not (out / "train_text_document.bin").exists()
    assert not (out / "train_text_document.idx").exists()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["outputs"] == [] and status["exit_code"] == 4


def test_clean_data_passes_every_rule(tmp_path: Path) -> None:
    code, quality, out = _prepare(tmp_path, _records(_texts(8)), "--profile",
                                  str(_profile(tmp_path)))
    assert code == 0 and quality["verdict"] == "pass" and quality["reasons"] == []
    assert {r["rule"]: r["outcome"] for r in quality["rules"]} == {
        "json_object": "pass", "text_field": "pass", "utf8": "pass", "nul_bytes": "pass",
        "duplicate_fraction": "pass", "doc_length_tokens": "pass", "document_count": "pass"}
    assert quality["records"] == quality["documents"] == 8 and quality["invalid_records"] == 0
    assert (out / "train_text_document.bin").exists()


@pytest.mark.parametrize(("rule", "bad", "detail"), [
    ("json_object", b'{"text": "unterminated}', "not valid JSON"),
    ("json_object", b'["text", "a list"]', "a JSON array, not an object"),
    ("json_object", b"   ", "blank line"),
    # Lines that would be valid inside a JSON array: a clean chunk is decoded as one array,
    # so these must still be caught one by one.
    ("json_object", b'{"text": "one"}, {"text": "two"}', "not valid JSON"),
    ("json_object", b'{"text": "trailing comma"},', "not valid JSON"),
    ("json_object", b"", "blank line"),
    ("text_field", b'{"body": "wrong key"}', "no 'text' key (keys: 'body')"),
    ("text_field", b'{"text": 42}', "'text' is a JSON number, not a string"),
    ("text_field", b'{"text": " \\n\\t "}', "'text' is empty or only whitespace"),
    ("text_field", b'{"text": "\\u200b\\u200d"}',
     "'text' has no visible character, only whitespace and invisible characters (first: "
     "U+200B ZERO WIDTH SPACE)"),
    ("text_field", '{"text": " \u2060\ufeff\u00ad "}'.encode(),
     "no visible character, only whitespace and invisible characters (first: U+2060 WORD "
     "JOINER)"),
    ("text_field", b'{"text": "\\u0007\\u001b"}', "(first: U+0007 control character)"),
    ("utf8", b'{"text": "caf\xe9"}', "invalid UTF-8 byte 0xe9 at byte 14"),
    ("utf8", b'{"text": "half \\ud800 pair"}', "unpaired surrogate \\ud800"),
    ("nul_bytes", b'{"text": "a\\u0000b"}', "NUL character (\\u0000) at position 1"),
    ("nul_bytes", b'{"text": "a"}\x00', "NUL byte at column 14"),
])
def test_record_rule_fails_and_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rule: str, bad: bytes, detail: str
) -> None:
    lines = _records(_texts(5))
    lines.insert(2, bad)  # line 3
    code, quality, out = _prepare(tmp_path, lines)
    _assert_failed(code, quality, out)
    result = _rule(quality, rule)
    assert result["outcome"] == "fail" and result["value"] == 1 and result["offending_lines"] == [3]
    assert result["examples"][0].startswith("line 3: ") and detail in result["examples"][0]
    assert "line 3: " in capsys.readouterr().err
    assert quality["invalid_records"] == 1 and quality["documents"] == 5


def test_tolerated_invalid_records_warn_and_are_left_out_of_the_binidx(tmp_path: Path) -> None:
    texts = _texts(5)
    lines = _records(texts)
    lines[1] = b'{"title": "no text"}'
    lines[3] = b"not json"
    code, quality, out = _prepare(tmp_path, lines, "--max-invalid-records", "2")
    assert code == 0 and quality["verdict"] == "warn" and quality["invalid_records"] == 2
    assert _rule(quality, "text_field")["outcome"] == "warn"
    assert _rule(quality, "json_object")["offending_lines"] == [4]
    assert any("left out of the binidx" in reason for reason in quality["reasons"])
    decoded = [tokenizer.decode(d) for d in binidx.read_documents(out / "train_text_document")]
    assert decoded == [texts[0], texts[2], texts[4]]
    status = json.loads((out / "status.json").read_text())
    assert status["metrics"]["invalid_records"] == 2 and status["metrics"]["documents"] == 3


def test_invisible_only_text_is_left_out_when_tolerated(tmp_path: Path) -> None:
    texts = _texts(3)
    lines = _records(texts)
    lines.insert(1, '{"text": "\u200b\u200c\u200d\u2060\ufeff"}'.encode())
    code, quality, out = _prepare(tmp_path, lines, "--max-invalid-records", "1")
    assert code == 0 and quality["verdict"] == "warn" and quality["documents"] == 3
    assert _rule(quality, "text_field")["offending_lines"] == [2]
    decoded = [tokenizer.decode(d) for d in binidx.read_documents(out / "train_text_document")]
    assert decoded == texts


def test_one_more_invalid_record_than_tolerated_fails(tmp_path: Path) -> None:
    lines = _records(_texts(5))
    lines[0], lines[4] = b"{", b'{"text": ""}'
    code, quality, out = _prepare(tmp_path, lines, "--max-invalid-records", "1")
    _assert_failed(code, quality, out)
    assert "2 invalid records in all, max_invalid_records is 1" in \
        _rule(quality, "json_object")["message"]


def test_duplicates_above_the_threshold_fail_and_cite_both_lines(tmp_path: Path) -> None:
    texts = _texts(10)
    texts[6], texts[8] = texts[1], texts[1]
    code, quality, out = _prepare(tmp_path, _records(texts))
    _assert_failed(code, quality, out)
    rule = _rule(quality, "duplicate_fraction")
    assert rule["value"] == 0.2 and rule["offending_lines"] == [7, 9]
    assert rule["examples"] == ["line 7 repeats line 2", "line 9 repeats line 2"]


def test_duplicates_within_the_threshold_pass(tmp_path: Path) -> None:
    texts = _texts(10)
    texts[6] = texts[1]
    code, quality, _ = _prepare(tmp_path, _records(texts), "--max-duplicate-fraction", "0.1")
    assert code == 0 and _rule(quality, "duplicate_fraction")["outcome"] == "pass"
    assert _rule(quality, "duplicate_fraction")["value"] == 0.1


def test_many_documents_longer_than_ctx_len_warn(tmp_path: Path) -> None:
    texts = _texts(6, words=200)[:4] + _texts(2)  # 4 of 6 are far longer than ctx_len 128
    code, quality, _ = _prepare(tmp_path, _records(texts), "--profile", str(_profile(tmp_path)))
    rule = _rule(quality, "doc_length_tokens")
    assert code == 0 and quality["verdict"] == "warn" and rule["outcome"] == "warn"
    assert rule["offending_lines"] == [1, 2, 3, 4] and rule["details"]["ctx_len"] == 128
    assert rule["value"] == pytest.approx(4 / 6, abs=1e-6)
    assert rule["details"]["max"] > 128 > rule["details"]["min"]


def test_warn_fails_the_stage_with_no_allow_warn(tmp_path: Path) -> None:
    texts = _texts(4, words=200)
    code, quality, out = _prepare(tmp_path, _records(texts), "--profile", str(_profile(tmp_path)),
                                  "--no-allow-warn")
    assert code == 4 and quality["verdict"] == "warn" and quality["allowed"] is False
    assert not (out / "train_text_document.bin").exists()


def test_few_long_documents_pass_the_length_rule(tmp_path: Path) -> None:
    texts = _texts(1, words=200) + _texts(5)
    code, quality, _ = _prepare(tmp_path, _records(texts), "--profile", str(_profile(tmp_path)))
    assert code == 0 and _rule(quality, "doc_length_tokens")["outcome"] == "pass"


def test_without_a_profile_the_profile_checks_are_skipped(tmp_path: Path) -> None:
    code, quality, _ = _prepare(tmp_path, _records(_texts(3, words=200)))
    assert code == 0 and quality["profile"] is None
    length, count = _rule(quality, "doc_length_tokens"), _rule(quality, "document_count")
    assert length["skipped"] and length["outcome"] == "pass" and length["value"] is None
    assert count["skipped"] and count["threshold"] == 1 and "no --profile given" in count["message"]


def test_too_few_documents_for_the_profile_fail_with_the_fix(tmp_path: Path) -> None:
    code, quality, out = _prepare(tmp_path, _records(_texts(7)),
                                  "--profile", str(_profile(tmp_path, epoch_steps=4, micro_bsz=2)))
    _assert_failed(code, quality, out)
    message = _rule(quality, "document_count")["message"]
    assert "needs epoch_steps 4 * micro_bsz 2 = 8" in message and "IndexError" in message
    assert "Lower epoch_steps to at most 3" in message


def test_exactly_enough_documents_for_the_profile_pass(tmp_path: Path) -> None:
    code, quality, _ = _prepare(tmp_path, _records(_texts(8)),
                                "--profile", str(_profile(tmp_path, epoch_steps=4, micro_bsz=2)))
    assert code == 0 and _rule(quality, "document_count")["value"] == 8


def test_a_file_of_only_invalid_lines_fails_document_count_too(tmp_path: Path) -> None:
    code, quality, out = _prepare(tmp_path, [b"", b"x"], "--max-invalid-records", "5")
    _assert_failed(code, quality, out)
    assert _rule(quality, "document_count")["outcome"] == "fail" and quality["documents"] == 0


def test_duplicate_spool_gives_the_same_answer_when_split_into_buckets() -> None:
    rng = np.random.default_rng(1)
    digests = rng.integers(0, 50, size=(400, 2), dtype=np.uint64)  # many collisions on purpose
    lines = np.arange(1, 401, dtype=np.uint64)
    answers = []
    for bucket_records in (10_000, 37):
        with tempfile.TemporaryFile() as handle:
            spool = DuplicateSpool(handle, bucket_records=bucket_records)
            spool.add(digests[:150], lines[:150])
            spool.add(digests[150:], lines[150:])
            answers.append(spool.find(keep=5))
    seen: dict[tuple[int, int], int] = {}
    expected = []
    for (a, b), line in zip(digests.tolist(), lines.tolist(), strict=True):
        if (a, b) in seen:
            expected.append((line, seen[(a, b)]))
        else:
            seen[(a, b)] = line
    assert answers[0] == answers[1]
    assert answers[0].count == len(expected) and answers[0].examples == expected[:5]
