"""Eval suites: schema, data hash, paths relative to the suite file, token windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peftflow.errors import ConfigError, DataError, IntegrityError, MissingInputError, SpecError
from peftflow.evaluate import suites
from peftflow.store.hashing import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs" / "eval").glob("*.yaml"))


def write_suite(folder: Path, texts: list[str], **fields: object) -> Path:
    data = folder / "data" / "texts.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    doc = {"name": "t", "kind": "domain", "ctx_len": 8,
           "data": {"path": "data/texts.jsonl", "sha256": sha256_file(data), "text_field": "body"}}
    doc.update(fields)
    path = folder / "suite.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def fake_encode(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_shipped_suites_are_valid_and_their_data_hashes_match() -> None:
    assert {p.name for p in SHIPPED} >= {"pydoc_domain.yaml", "lambada_retention.yaml"}
    kinds = set()
    for path in SHIPPED:
        suite = suites.load(path)
        suites.verify_data(suite)
        kinds.add(suite.kind)
    assert kinds == {suites.SuiteKind.DOMAIN, suites.SuiteKind.RETENTION}


def _smoke_records() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    def read(path: Path) -> list[dict[str, str]]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    suite = suites.load(ROOT / "configs" / "eval" / "pydoc_domain.yaml")
    train = ROOT / "data" / "smoke" / "pydoc-docs" / "v1" / "train.jsonl"
    return read(train), read(suite.data_path)


def test_domain_suite_topics_are_held_out_from_the_smoke_training_data() -> None:
    train, held_out = _smoke_records()
    assert len(held_out) == 36
    assert not {r["topic"] for r in train} & {r["topic"] for r in held_out}


def test_domain_suite_shares_no_document_with_the_smoke_training_data() -> None:
    train, held_out = _smoke_records()
    assert not {r["text"] for r in train} & {r["text"] for r in held_out}


def test_data_path_resolves_against_the_suite_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_suite(tmp_path / "suites", ["abc"])
    monkeypatch.chdir(tmp_path)
    suite = suites.load(os.path.relpath(path, tmp_path))
    assert suite.data_path == tmp_path / "suites" / "data" / "texts.jsonl"
    assert suites.texts(suite) == ["abc"]


def test_changed_data_is_an_integrity_error_naming_both_hashes(tmp_path: Path) -> None:
    path = write_suite(tmp_path, ["abc", "def"])
    data = tmp_path / "data" / "texts.jsonl"
    recorded = sha256_file(data)
    data.write_text(json.dumps({"body": "changed"}) + "\n", encoding="utf-8")
    suite = suites.load(path)
    with pytest.raises(IntegrityError, match=rf"has sha256 {sha256_file(data)}, the suite "
                                             rf"records {recorded}"):
        suites.texts(suite)


def test_missing_suite_and_missing_data_are_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="eval suite not found"):
        suites.load(tmp_path / "nope.yaml")
    path = write_suite(tmp_path, ["abc"])
    (tmp_path / "data" / "texts.jsonl").unlink()
    with pytest.raises(MissingInputError, match=r"\$\.data\.path: .*texts.jsonl not found"):
        suites.verify_data(suites.load(path))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "general"}, r"\$\.kind: 'general' is not one of"),
        ({"ctx_len": 0}, r"\$\.ctx_len: 0 is less than the minimum of 1"),
        ({"max_documents": "all"}, r"\$\.max_documents: 'all' is not of type 'integer'"),
        ({"extra": 1}, r"\$\.extra: unknown key 'extra'"),
    ],
)
def test_schema_problems_are_located(
    tmp_path: Path, fields: dict[str, object], message: str
) -> None:
    path = write_suite(tmp_path, ["abc"], **fields)
    with pytest.raises(SpecError, match=rf"{path}:1:\d+: {message}"):
        suites.load(path)


def test_duplicate_suite_names_are_refused(tmp_path: Path) -> None:
    one = write_suite(tmp_path / "a", ["abc"])
    two = write_suite(tmp_path / "b", ["abc"])
    with pytest.raises(ConfigError, match="suite name 't' is also used by"):
        suites.load_all([one, two])


def test_record_without_text_names_the_line(tmp_path: Path) -> None:
    path = write_suite(tmp_path, ["abc"])
    data = tmp_path / "data" / "texts.jsonl"
    data.write_text('{"body": "ok"}\n{"other": 1}\n', encoding="utf-8")
    path.write_text(path.read_text().replace(json.loads(path.read_text())["data"]["sha256"],
                                             sha256_file(data)))
    with pytest.raises(DataError, match=r"texts.jsonl:2: no non-empty string under 'body'"):
        suites.texts(suites.load(path))


def test_a_record_of_only_invisible_characters_is_an_empty_text(tmp_path: Path) -> None:
    """Zero-width and format characters score nothing: such a record is empty, not a text."""
    path = write_suite(tmp_path, ["ok", "\u200b\u200d\ufeff \u2060"])
    with pytest.raises(DataError, match=r"texts.jsonl:2: no non-empty string under 'body'"):
        suites.texts(suites.load(path))


def test_windows_start_with_eod_and_respect_ctx_len_and_limits(tmp_path: Path) -> None:
    path = write_suite(tmp_path, ["abcdefghijkl", "xy", "mnop", "qrs"], max_documents=3,
                       max_tokens=12)
    docs = suites.tokenize(suites.load(path), fake_encode)
    # ctx_len 8 cuts the first document; max_tokens 12 leaves 2 + 2 of the next ones.
    assert docs.windows == ((0, *map(ord, "abcdefgh")), (0, *map(ord, "xy")),
                            (0, *map(ord, "mn")))
    assert docs.tokens == 12


def test_fast_tokenizer_matches_the_reference_on_the_suite_texts() -> None:
    import rwkv
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    reference = TRIE_TOKENIZER(str(Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt"))
    encode = suites.encoder()
    for path in SHIPPED:
        for text in suites.texts(suites.load(path)):
            assert encode(text) == reference.encode(text)
