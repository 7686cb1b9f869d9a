"""The smoke corpus: Python's own reference documentation (pydoc_data.topics, ships with CPython).

Topics are split by a fixed rule into a training set and a held-out domain evaluation set, so
the domain suite never contains text the smoke adapter was trained on. The generated files are
committed (their text depends on the CPython version); `peftflow dataset make-smoke` rebuilds them.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftflow.store import atomic

HELD_OUT_EVERY = 5  # every 5th topic, in sorted order, goes to the held-out domain suite
TARGET_CHARS = 700  # paragraphs are grouped into documents of about this many characters


def _documents(text: str) -> list[str]:
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        current.append(paragraph)
        size += len(paragraph)
        if size >= TARGET_CHARS:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def split_topics() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train records, held-out records), each {"text": ..., "topic": ...}."""
    from pydoc_data.topics import topics

    train: list[dict[str, str]] = []
    held_out: list[dict[str, str]] = []
    seen: set[str] = set()  # topics repeat paragraphs; a duplicate would leak across splits
    for index, name in enumerate(sorted(topics)):
        target = held_out if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train
        for doc in _documents(topics[name]):
            if doc not in seen:
                seen.add(doc)
                target.append({"text": doc, "topic": name})
    return train, held_out


def _jsonl(records: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(train_path: Path, held_out_path: Path) -> tuple[int, int]:
    train, held_out = split_topics()
    atomic.write_text(train_path, _jsonl(train))
    atomic.write_text(held_out_path, _jsonl(held_out))
    return len(train), len(held_out)
