"""Evaluation suites (configs/eval/*.yaml): validated, hash-checked, tokenised documents."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from peftflow.dataset.reader import visible
from peftflow.errors import (
    ConfigError,
    DataError,
    IntegrityError,
    MissingInputError,
    Problem,
    SpecError,
)
from peftflow.store import schemas, yamlmarks
from peftflow.store.hashing import sha256_file
from peftflow.store.paths import path_problem

EOD = 0  # RWKV World id 0: end of document; every document is scored after it (fresh context)


class SuiteKind(enum.StrEnum):
    DOMAIN = "domain"
    RETENTION = "retention"


@dataclass(frozen=True)
class Suite:
    name: str
    kind: SuiteKind
    description: str
    path: Path  # the suite YAML
    sha256: str  # of the suite YAML
    data_path: Path
    data_sha256: str  # as recorded in the suite; checked against the file by `texts()`
    text_field: str
    max_documents: int | None
    max_tokens: int | None
    ctx_len: int


@dataclass(frozen=True)
class Documents:
    """The token windows of one suite: each is [EOD, t1, ..., tn], scoring t1..tn."""

    suite: Suite
    windows: tuple[tuple[int, ...], ...]

    @property
    def tokens(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


def load(path: str | Path) -> Suite:
    """Load and validate a suite file (no data is read yet); its data path must stay inside
    the allowed roots or the suite's own folder."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise MissingInputError(
            f"{shown}: eval suite not found; pass an existing configs/eval/*.yaml")
    marked = yamlmarks.load_file(shown)
    schemas.check(marked, "eval_suite", shown)
    data = marked.data
    data_path = Path(data["data"]["path"]).expanduser()
    if not data_path.is_absolute():
        data_path = path.resolve().parent / data_path
    problem = path_problem(data["data"]["path"], data_path.resolve(), path, "the suite's data")
    if problem:
        raise SpecError([Problem(shown, *marked.locate("$.data.path"), "$.data.path", problem)])
    return Suite(
        name=data["name"],
        kind=SuiteKind(data["kind"]),
        description=data.get("description", ""),
        path=path.resolve(),
        sha256=sha256_file(path),
        data_path=data_path,
        data_sha256=data["data"]["sha256"],
        text_field=data["data"].get("text_field", "text"),
        max_documents=data.get("max_documents"),
        max_tokens=data.get("max_tokens"),
        ctx_len=data["ctx_len"],
    )


def load_all(paths: Sequence[str | Path]) -> list[Suite]:
    """Load several suites; their names must be unique."""
    suites = [load(p) for p in paths]
    seen: dict[str, Path] = {}
    for suite in suites:
        if suite.name in seen:
            raise ConfigError(
                f"{suite.path}: suite name {suite.name!r} is also used by {seen[suite.name]}; "
                "give every suite of one evaluation its own name"
            )
        seen[suite.name] = suite.path
    return suites


def verify_data(suite: Suite) -> None:
    """Raise unless the suite's JSONL exists and has the recorded sha256."""
    if not suite.data_path.is_file():
        raise MissingInputError(
            f"{suite.path}: $.data.path: {suite.data_path} not found (relative paths resolve "
            "against the suite file's folder)"
        )
    actual = sha256_file(suite.data_path)
    if actual != suite.data_sha256:
        raise IntegrityError(
            f"{suite.path}: $.data.sha256: {suite.data_path} has sha256 {actual}, the suite "
            f"records {suite.data_sha256}; the held-out text changed. Restore the file, or if "
            "the change is intended, write the new hash into the suite (scores across the "
            "change are not comparable)"
        )


def texts(suite: Suite) -> list[str]:
    """The suite's texts in file order (at most max_documents), after the sha256 check."""
    verify_data(suite)
    found: list[str] = []
    with open(suite.data_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if suite.max_documents is not None and len(found) >= suite.max_documents:
                break
            if not line.strip():
                continue
            where = f"{suite.data_path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: not valid JSON ({exc.msg}); fix or remove the line") from None
            text = record.get(suite.text_field) if isinstance(record, dict) else None
            if not isinstance(text, str) or not visible(text):  # zero-width only = empty
                raise DataError(
                    f"{where}: no non-empty string under {suite.text_field!r}; every record "
                    f"needs its text there (or set data.text_field in {suite.path})"
                )
            found.append(text)
    if not found:
        raise DataError(f"{suite.data_path}: no documents; an eval suite needs at least one")
    return found


def tokenize(suite: Suite, encode: Callable[[str], list[int]]) -> Documents:
    """Token windows: each document truncated to ctx_len predictions, capped by max_tokens."""
    windows: list[tuple[int, ...]] = []
    budget = suite.max_tokens
    for text in texts(suite):
        ids = encode(text)[: suite.ctx_len]
        if budget is not None:
            ids = ids[:budget]
            budget -= len(ids)
        if ids:
            windows.append((EOD, *ids))
        if budget == 0:
            break
    return Documents(suite, tuple(windows))


def encoder() -> Callable[[str], list[int]]:
    """The RWKV World tokenizer (the Rust implementation the prepare stage uses)."""
    import pyrwkv_tokenizer

    tokenizer = pyrwkv_tokenizer.RWKVTokenizer()

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text))

    return encode


def tokenizer_name() -> str:
    from importlib.metadata import version

    return f"pyrwkv-tokenizer {version('pyrwkv-tokenizer')} (RWKV World, rwkv_vocab_v20230424)"
