"""Cutting a JSONL file into spans of whole lines, and checking + tokenising one span.

`scan_span` runs in worker processes: it reads its byte range, validates every line against
the record rules, tokenises the valid texts and returns compact numpy arrays, so the parent
only plans spans and writes results.
Valid lines take a fast path (msgspec decodes only the text field); any line that fails it is
re-read by `classify`, which names the exact problem.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from peftflow.dataset import tokenizer
from peftflow.errors import IntegrityError

# The record rules; a line breaking one of them is an invalid record (first failing rule wins).
RECORD_RULES = ("json_object", "text_field", "utf8", "nul_bytes")
CHUNK_BYTES = 1 << 20
_PROBE = 1 << 16


_NON_SPACE = re.compile(r"\S")
# Characters that show nothing: format (zero-width space U+200B, joiners U+200C/U+200D, word
# joiner U+2060, BOM U+FEFF, ...) and control characters. A text of only these and
# whitespace is empty for the text_field rule.
_INVISIBLE = frozenset({"Cf", "Cc"})


def visible(text: str) -> bool:
    """Whether `text` has a character that is neither whitespace nor invisible."""
    head = text[:1]
    if head and not head.isspace() and head.isprintable():  # almost every text, at once
        return True
    first = _NON_SPACE.search(text)
    if first is None:
        return False
    if text[first.start()].isprintable():
        return True
    return any(not c.isspace() and unicodedata.category(c) not in _INVISIBLE
               for c in text[first.start():])


def _first_invisible(text: str) -> str:
    c = next((c for c in text if not c.isspace()), "")
    return f"U+{ord(c):04X} {unicodedata.name(c, 'control character')}" if c else ""


@dataclass(frozen=True)
class Chunk:
    data: bytes  # whole lines; ends with b"\n" unless it is the file's unterminated last line
    first_line: int = 1  # number of its first line (workers count from 1; the parent shifts)
    unterminated: bool = False  # the file ends inside this chunk without a newline

    @property
    def records(self) -> int:
        return self.data.count(b"\n") + (1 if self.unterminated else 0)


@dataclass(frozen=True)
class Span:
    """A byte range of whole lines; workers read it themselves, so the parent never
    copies the data through a pipe."""

    path: str
    offset: int
    length: int
    unterminated: bool  # the file ends inside this span without a newline

    def load(self) -> Chunk:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.length)
        if len(data) != self.length:
            raise IntegrityError(f"{self.path}: shorter than expected while reading; it "
                                 "changed during the run. Rerun once the file is stable")
        return Chunk(data, 1, self.unterminated)


def plan_spans(path: str, size: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Span]:
    """Cut a file into spans of about `chunk_bytes` that end on a line boundary."""
    with open(path, "rb") as handle:
        if size:
            handle.seek(size - 1)
        ends_with_newline = handle.read(1) == b"\n"
        offset = 0
        while offset < size:
            end = min(offset + chunk_bytes, size)
            handle.seek(end)
            while end < size:  # extend to the next newline (a line may be longer than a chunk)
                block = handle.read(_PROBE)
                cut = block.find(b"\n")
                if cut >= 0:
                    end += cut + 1
                    break
                end += len(block)
                if not block:
                    end = size
            yield Span(path, offset, end - offset, end == size and not ends_with_newline)
            offset = end


@dataclass
class Hits:
    """How often a rule was broken, and the first offenders as (line, detail)."""

    count: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, detail: str, keep: int) -> None:
        self.count += 1
        if len(self.examples) < keep:
            self.examples.append((line, detail))

    def merge(self, other: Hits, keep: int) -> None:
        self.count += other.count
        self.examples.extend(other.examples[: max(0, keep - len(self.examples))])


@dataclass
class ChunkResult:
    records: int
    nbytes: int
    tokens: np.ndarray  # uint16, every valid document followed by EOD
    sizes: np.ndarray  # int32 tokens per document, EOD included
    lines: np.ndarray  # uint64 line number of each document
    digests: np.ndarray  # (documents, 2) uint64 BLAKE2b-128 of each text, for duplicates
    invalid: dict[str, Hits]
    over_ctx: Hits

    def shift(self, lines_before: int) -> None:
        """Turn the chunk's line numbers (from 1) into the file's."""
        if not lines_before:
            return
        self.lines += np.uint64(lines_before)
        for hits in (*self.invalid.values(), self.over_ctx):
            hits.examples = [(n + lines_before, d) for n, d in hits.examples]


@functools.lru_cache(maxsize=8)
def _decoder(text_field: str, batch: bool = False) -> msgspec.json.Decoder[Any]:
    """Decodes a record (or, with `batch`, an array of records) reading only `text_field`."""
    record = msgspec.defstruct(
        "Record", [("value", str)], rename={"value": text_field}, forbid_unknown_fields=False
    )
    return msgspec.json.Decoder(list[record] if batch else record)  # type: ignore[valid-type]


def scan_span(span: Span, text_field: str, ctx_len: int | None, keep: int) -> ChunkResult:
    """Read and scan one span (runs in a worker process); line numbers count from 1."""
    return scan_chunk(span.load(), text_field, ctx_len, keep)


def _valid_texts(lines: list[bytes], text_field: str) -> list[str] | None:
    """Every line's text when all lines are valid records (one decode call), else None.

    The lines are decoded as one JSON array; a line holding two objects, or none, changes
    the count or breaks the syntax, so a count match means one object per line."""
    try:
        records = _decoder(text_field, batch=True).decode(b"[" + b",".join(lines) + b"]")
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if len(records) != len(lines):
        return None
    texts = [record.value for record in records]
    if not all(map(visible, texts)) or any("\x00" in t for t in texts):
        return None
    return texts


def _checked_texts(chunk: Chunk, lines: list[bytes], text_field: str, keep: int,
                   invalid: dict[str, Hits]) -> tuple[list[str], list[int]]:
    """The valid lines' texts and line numbers; invalid lines are counted in `invalid`."""
    decode = _decoder(text_field).decode
    texts: list[str] = []
    numbers: list[int] = []
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        number = chunk.first_line + i
        try:
            text: str | None = decode(raw).value
        except (msgspec.DecodeError, UnicodeDecodeError):
            text = None
        if text is None or not visible(text) or "\x00" in text:
            rule, detail, text = classify(raw, text_field, chunk.unterminated and i == last)
            if rule is not None:
                invalid[rule].add(number, detail, keep)
                continue
        assert text is not None
        texts.append(text)
        numbers.append(number)
    return texts, numbers


def scan_chunk(chunk: Chunk, text_field: str, ctx_len: int | None, keep: int) -> ChunkResult:
    """Validate and tokenise every line of a chunk."""
    lines = chunk.data.split(b"\n")
    if not chunk.unterminated:
        lines.pop()  # the empty piece after the final newline
    invalid = {rule: Hits() for rule in RECORD_RULES}
    over_ctx = Hits()
    # Almost every chunk is clean: one decode for all of it; line by line only to find culprits.
    texts = _valid_texts(lines, text_field)
    numbers: Sequence[int]
    if texts is None:
        texts, numbers = _checked_texts(chunk, lines, text_field, keep, invalid)
    else:
        numbers = range(chunk.first_line, chunk.first_line + len(lines))
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts])
    tokens, size_array = tokenizer.encode_documents(texts)
    if ctx_len is not None:  # text tokens = size - 1 (the EOD)
        longer = np.flatnonzero(size_array > ctx_len + 1)
        over_ctx.count = int(longer.size)
        over_ctx.examples = [(numbers[i], f"{size_array[i] - 1} tokens") for i in longer[:keep]]
    return ChunkResult(
        records=len(lines),
        nbytes=len(chunk.data),
        tokens=tokens,
        sizes=size_array,
        lines=np.array(numbers, dtype=np.uint64),
        digests=np.frombuffer(digests, dtype="<u8").reshape(-1, 2),
        invalid=invalid,
        over_ctx=over_ctx,
    )


_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _kind(value: Any) -> str:
    return "null" if value is None else _JSON_KIND.get(type(value), type(value).__name__)


def classify(raw: bytes, text_field: str, truncated: bool) -> tuple[str | None, str, str | None]:
    """(rule, detail, None) for an invalid line, or (None, "", text) when it is valid after all."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "utf8", (
            f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}; "
            "re-encode the file as UTF-8"
        ), None
    if "\x00" in line:
        return "nul_bytes", f"NUL byte at column {line.index(chr(0)) + 1}; remove it", None
    if not line.strip():
        return "json_object", "blank line; JSONL needs one JSON object per line, delete it", None
    if line.startswith("\ufeff"):
        return "json_object", "starts with a UTF-8 byte-order mark; save the file without BOM", None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        if truncated:
            return "json_object", (
                f"truncated last line: no trailing newline and the JSON is incomplete "
                f"({exc.msg} at column {exc.colno}); the file was probably cut off while "
                "being written: export it again and register a new version"
            ), None
        return "json_object", f"not valid JSON: {exc.msg} at column {exc.colno}", None
    if not isinstance(record, dict):
        return "json_object", (
            f"a JSON {_kind(record)}, not an object; write one {{{json.dumps(text_field)}: "
            "...} object per line"
        ), None
    if text_field not in record:
        keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
        return "text_field", (
            f"no {text_field!r} key (keys: {keys}); add it, or register the dataset with "
            "--text-field naming the key that holds the text"
        ), None
    value = record[text_field]
    if not isinstance(value, str):
        return "text_field", f"{text_field!r} is a JSON {_kind(value)}, not a string", None
    if "\x00" in value:
        return "nul_bytes", (
            f"{text_field!r} contains a NUL character (\\u0000) at position "
            f"{value.index(chr(0))}; remove it"
        ), None
    if not value.strip():
        return "text_field", f"{text_field!r} is empty or only whitespace", None
    if not visible(value):
        return "text_field", (
            f"{text_field!r} has no visible character, only whitespace and invisible "
            f"characters (first: {_first_invisible(value)}); it is empty text: remove the "
            "record or restore its text"
        ), None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return "utf8", (
            f"{text_field!r} contains an unpaired surrogate \\u{ord(value[exc.start]):04x} at "
            f"position {exc.start}, which is not valid Unicode; fix the exporter"
        ), None
    return None, "", value
