"""Exact-duplicate detection over any number of documents in bounded memory.

Each valid document contributes (BLAKE2b-128 of its text, line number) to a spool file.
At the end the spool is split by hash into buckets small enough to sort in memory, so the
peak memory is about `BUCKET_RECORDS` records, whatever the number of documents.
"""

from __future__ import annotations

import heapq
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

RECORD = np.dtype([("h0", "<u8"), ("h1", "<u8"), ("line", "<u8")])
BUCKET_RECORDS = 2_000_000  # 48 MB per bucket in memory


@dataclass(frozen=True)
class Duplicates:
    count: int  # documents whose text equals an earlier document's text
    examples: list[tuple[int, int]]  # first offenders: (line, line of the first occurrence)


class DuplicateSpool:
    """Collects (digest, line) records on disk; `find()` reports the exact duplicates."""

    def __init__(self, handle: BinaryIO, bucket_records: int = BUCKET_RECORDS) -> None:
        self._handle = handle
        self._bucket_records = bucket_records
        self.records = 0

    def add(self, digests: np.ndarray, lines: np.ndarray) -> None:
        block = np.empty(lines.size, dtype=RECORD)
        block["h0"], block["h1"], block["line"] = digests[:, 0], digests[:, 1], lines
        self._handle.write(block.tobytes())
        self.records += int(lines.size)

    def find(self, keep: int) -> Duplicates:
        self._handle.flush()
        buckets = max(1, math.ceil(self.records / self._bucket_records))
        if buckets == 1:
            return _duplicates_in([self._read_all()], keep)
        with tempfile.TemporaryDirectory(prefix="peftflow-dedup-") as folder:
            paths = self._partition(Path(folder), buckets)
            return _duplicates_in((np.fromfile(p, dtype=RECORD) for p in paths), keep)

    def _read_all(self) -> np.ndarray:
        self._handle.seek(0)
        return np.frombuffer(self._handle.read(), dtype=RECORD)

    def _partition(self, folder: Path, buckets: int) -> list[Path]:
        paths = [folder / f"bucket-{b}" for b in range(buckets)]
        outs = [open(p, "wb") for p in paths]  # noqa: SIM115 - closed below
        try:
            self._handle.seek(0)
            while block := self._handle.read(self._bucket_records * RECORD.itemsize):
                records = np.frombuffer(block, dtype=RECORD)
                which = records["h0"] % np.uint64(buckets)
                for b in range(buckets):
                    outs[b].write(records[which == b].tobytes())
        finally:
            for out in outs:
                out.close()
        return paths


def _duplicates_in(buckets: Iterable[np.ndarray], keep: int) -> Duplicates:
    count = 0
    examples: list[tuple[int, int]] = []
    for records in buckets:
        if records.size < 2:
            continue
        ordered = records[np.lexsort((records["line"], records["h1"], records["h0"]))]
        same = (ordered["h0"][1:] == ordered["h0"][:-1]) & (ordered["h1"][1:] == ordered["h1"][:-1])
        count += int(same.sum())
        if keep and same.any():
            group = np.cumsum(np.concatenate(([True], ~same))) - 1
            firsts = ordered["line"][np.flatnonzero(np.concatenate(([True], ~same)))]
            repeat = np.flatnonzero(same) + 1
            pairs = zip(
                ordered["line"][repeat].tolist(), firsts[group[repeat]].tolist(), strict=True
            )
            examples = heapq.nsmallest(keep, [*examples, *pairs])
    return Duplicates(count, examples)
