"""Dataset manifests: register writes one immutable record per version, never touching the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.dataset import load_manifest, register_dataset
from peftflow.errors import ConfigError, DataError, IntegrityError, MissingInputError, SpecError
from peftflow.store.hashing import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peftflow.cli.main", "dataset", *args],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def test_register_writes_the_manifest_beside_the_data_and_leaves_the_data_alone(
        tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one", "two", "three"])
    before = _snapshot(data)
    path, created = register_dataset(data, "docs", "v1", source="unit test", notes="three lines")
    assert created and path == tmp_path / "train.manifest.json"
    assert _snapshot(data) == before
    m = load_manifest(path)
    assert (m.name, m.version, m.text_field, m.source, m.notes) == (
        "docs", "v1", "text", "unit test", "three lines")
    entry = m.files[0]
    assert (entry.path, entry.records, entry.bytes) == ("train.jsonl", 3, data.stat().st_size)
    assert entry.sha256 == sha256_file(data) and m.data_paths() == [data.resolve()]
    m.verify()


def test_manifest_written_elsewhere_points_back_with_a_relative_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ../raw leaves the manifest's folder: allowed only inside the allowed roots
    # (tests/test_hostile_paths.py checks the refusal).
    monkeypatch.setenv("PEFTFLOW_ALLOWED_ROOTS", str(tmp_path))
    (tmp_path / "raw").mkdir()
    data = _jsonl(tmp_path / "raw" / "export.jsonl", ["a"])
    path, _ = register_dataset(data, "docs", "v1", out=tmp_path / "manifests" / "docs-v1.json")
    m = load_manifest(path)
    assert m.files[0].path == "../raw/export.jsonl" and m.data_paths() == [data.resolve()]


def test_records_count_an_unterminated_last_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"text": "a"}\n{"text": "b"}')
    path, _ = register_dataset(data, "docs", "v1")
    assert load_manifest(path).files[0].records == 2


def test_re_registering_identical_content_is_a_no_op(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    path, _ = register_dataset(data, "docs", "v1")
    before = _snapshot(path)
    again, created = register_dataset(data, "docs", "v1", notes="other notes")
    assert (again, created) == (path, False) and _snapshot(path) == before
    result = _cli("register", str(data), "--name", "docs", "--version", "v1")
    assert result.returncode == 0, result.stderr
    assert "already registered with identical content" in result.stderr
    assert _snapshot(path) == before


def test_same_version_with_different_content_is_refused(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    path, _ = register_dataset(data, "docs", "v1")
    before = _snapshot(path)
    _jsonl(data, ["one", "two"])
    with pytest.raises(IntegrityError, match=r"docs@v1 is already registered .* different content"):
        register_dataset(data, "docs", "v1")
    result = _cli("register", str(data), "--name", "docs", "--version", "v1")
    assert result.returncode == 5
    assert "register the new content under a new --version" in result.stderr
    assert "Traceback" not in result.stderr and _snapshot(path) == before


def test_same_version_with_another_text_field_is_refused(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    register_dataset(data, "docs", "v1")
    with pytest.raises(IntegrityError, match="text_field 'body'"):
        register_dataset(data, "docs", "v1", text_field="body")


def test_another_version_cannot_overwrite_a_manifest(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    register_dataset(data, "docs", "v1")
    with pytest.raises(ConfigError, match="already registers docs@v1, not docs@v2"):
        register_dataset(data, "docs", "v2")


def test_empty_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "empty.jsonl"
    data.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty \(0 bytes\)"):
        register_dataset(data, "docs", "v1")
    assert not (tmp_path / "empty.manifest.json").exists() and data.read_bytes() == b""


def test_missing_data_file_and_bad_names_are_reported(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="data file not found"):
        register_dataset(tmp_path / "nope.jsonl", "docs", "v1")
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    with pytest.raises(SpecError, match=r"\$\.name: 'bad name' does not match"):
        register_dataset(data, "bad name", "v1")


def test_load_manifest_points_at_the_line_of_a_schema_problem(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    path, _ = register_dataset(data, "docs", "v1")
    doc = json.loads(path.read_text())
    doc["files"][0]["sha256"] = "xyz"
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(SpecError,
                       match=r"train\.manifest\.json:12:17: \$\.files\[0\]\.sha256: 'xyz'"):
        load_manifest(path)
    path.write_text('{"name": "docs",\n  "version": }')
    with pytest.raises(SpecError, match=r":2:14: \$: not valid JSON"):
        load_manifest(path)


def test_verify_names_the_changed_file_and_the_fix(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", ["one"])
    path, _ = register_dataset(data, "docs", "v1")
    data.write_text(data.read_text().replace("one", "uno"), encoding="utf-8")
    with pytest.raises(IntegrityError,
                       match=r"sha256 .* does not match .* register the new content"):
        load_manifest(path).verify()
    data.write_bytes(b"")
    with pytest.raises(IntegrityError, match=r"is empty \(0 bytes\) but manifest"):
        load_manifest(path).verify()
    data.unlink()
    with pytest.raises(MissingInputError, match="data file of docs@v1 not found"):
        load_manifest(path).verify()


def test_committed_smoke_manifest_matches_the_smoke_data() -> None:
    m = load_manifest(ROOT / "data/smoke/pydoc-docs/v1/train.manifest.json")
    assert (m.name, m.version, m.text_field) == ("pydoc-docs", "v1", "text")
    with open(m.data_paths()[0], "rb") as handle:
        assert m.files[0].records == sum(1 for _ in handle)
    m.verify()


def test_make_smoke_refuses_to_change_a_registered_file(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", ["not the pydoc text"])
    register_dataset(train, "pydoc-docs", "v1")
    before = _snapshot(train)
    result = _cli("make-smoke", "--train", str(train), "--held-out", str(tmp_path / "h.jsonl"))
    assert result.returncode == 5 and "is registered in" in result.stderr
    assert _snapshot(train) == before and not (tmp_path / "h.jsonl").exists()


def test_make_smoke_writes_the_corpus_where_asked(tmp_path: Path) -> None:
    result = _cli("make-smoke", "--train", str(tmp_path / "t.jsonl"),
                  "--held-out", str(tmp_path / "h.jsonl"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "t.jsonl").read_bytes() == \
        (ROOT / "data/smoke/pydoc-docs/v1/train.jsonl").read_bytes()
