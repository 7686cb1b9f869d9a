"""Megatron MMIDIDX (.bin/.idx), the binidx layout RWKV-PEFT reads; streamed in both directions.

Layout of `.idx` (little-endian): magic `MMIDIDX\\0\\0`, u64 version 1, u8 dtype code, u64 N,
u64 N+1, i32 sizes[N], i64 pointers[N] (byte offsets into `.bin`), i64 doc_idx[N+1] = 0..N.
`.bin` holds the token ids of every document back to back, no header.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from peftflow.errors import IntegrityError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, N+1
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
    6: np.float32, 7: np.float64, 8: np.uint16,
}
CODE_OF = {np.dtype(t): code for code, t in DTYPE_CODES.items()}
_BLOCK = 1 << 20  # entries per block when streaming sizes/pointers into the index


class BinIdxWriter:
    """Writes `.bin` as chunks arrive and spools document sizes; `finish()` writes the `.idx`.

    Memory stays bounded however many documents there are: sizes go to a spool file on
    disk and the index is produced block by block.
    """

    def __init__(self, bin_handle: BinaryIO, spool: BinaryIO, dtype: type[np.generic] = np.uint16):
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no MMIDIDX code")
        self._bin = bin_handle
        self._spool = spool
        self.documents = 0
        self.tokens = 0

    def add(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Append documents: `tokens` is their concatenation, `sizes` their lengths in tokens."""
        if int(sizes.sum()) != tokens.size:
            raise ValueError(f"sizes sum to {int(sizes.sum())} but {tokens.size} tokens were given")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._spool.write(np.ascontiguousarray(sizes, dtype="<i4").tobytes())
        self.documents += int(sizes.size)
        self.tokens += int(tokens.size)

    def finish(self, idx_handle: BinaryIO) -> None:
        """Write the complete `.idx` for every document added so far."""
        self._spool.flush()
        n = self.documents
        idx_handle.write(HEADER.pack(MAGIC, VERSION, CODE_OF[self.dtype], n, n + 1))
        for block in _spool_blocks(self._spool, n):
            idx_handle.write(block.tobytes())
        offset = 0
        for block in _spool_blocks(self._spool, n):
            starts = np.cumsum(block, dtype="<i8") * self.dtype.itemsize
            pointers = np.empty_like(starts)
            pointers[0] = offset
            pointers[1:] = offset + starts[:-1]
            offset += int(starts[-1])
            idx_handle.write(pointers.tobytes())
        for first in range(0, n + 1, _BLOCK):
            idx_handle.write(np.arange(first, min(first + _BLOCK, n + 1), dtype="<i8").tobytes())


def _spool_blocks(spool: BinaryIO, n: int) -> Iterator[np.ndarray]:
    spool.seek(0)
    left = n
    while left:
        count = min(left, _BLOCK)
        block = np.frombuffer(spool.read(count * 4), dtype="<i4")
        if block.size != count:
            raise IntegrityError(f"size spool {getattr(spool, 'name', '?')} is truncated")
        yield block
        left -= count


def write(prefix: str | Path, documents: list[np.ndarray],
          dtype: type[np.generic] = np.uint16) -> None:
    """Write small in-memory documents to PREFIX.bin/.idx (tests, tools); not atomic."""
    import tempfile

    with open(f"{prefix}.bin", "wb") as bin_handle, tempfile.TemporaryFile() as spool:
        writer = BinIdxWriter(bin_handle, spool, dtype)
        if documents:
            sizes = np.array([d.size for d in documents], dtype=np.int32)
            writer.add(np.concatenate(documents).astype(dtype), sizes)
        with open(f"{prefix}.idx", "wb") as idx_handle:
            writer.finish(idx_handle)


@dataclass(frozen=True)
class Index:
    """A parsed `.idx`: dtype, sizes and pointers (memory-mapped)."""

    path: Path
    dtype: np.dtype
    sizes: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray

    def __len__(self) -> int:
        return int(self.sizes.size)


def read_index(path: str | Path) -> Index:
    """Parse and check an `.idx` file; raise IntegrityError naming what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(HEADER.size)
    if len(head) < HEADER.size:
        raise IntegrityError(f"{path}: {size} bytes, too short for an MMIDIDX header")
    magic, version, code, n, m = HEADER.unpack(head)
    if magic != MAGIC or version != VERSION:
        raise IntegrityError(f"{path}: not an MMIDIDX v1 index (magic {magic!r}, "
                             f"version {version})")
    if code not in DTYPE_CODES or m != n + 1:
        raise IntegrityError(f"{path}: bad header (dtype code {code}, N {n}, doc_idx length {m})")
    expected = HEADER.size + 4 * n + 8 * n + 8 * m
    if size != expected:
        raise IntegrityError(f"{path}: {size} bytes, expected {expected} for {n} documents")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    sizes = data[HEADER.size : HEADER.size + 4 * n].view("<i4")
    pointers = data[HEADER.size + 4 * n : HEADER.size + 12 * n].view("<i8")
    doc_idx = data[HEADER.size + 12 * n :].view("<i8")
    return Index(path, np.dtype(DTYPE_CODES[code]), sizes, pointers, doc_idx)


def read_documents(prefix: str | Path) -> Iterator[np.ndarray]:
    """Yield each document's tokens (EOD included) from PREFIX.bin/.idx."""
    index = read_index(f"{prefix}.idx")
    bin_path = f"{prefix}.bin"
    expected = int(index.sizes.sum(dtype=np.int64)) * index.dtype.itemsize
    if os.path.getsize(bin_path) != expected:
        raise IntegrityError(f"{bin_path}: {os.path.getsize(bin_path)} bytes, "
                             f"index says {expected}")
    if not len(index):
        return
    tokens = np.memmap(bin_path, dtype=index.dtype, mode="r")
    for pointer, count in zip(index.pointers, index.sizes, strict=True):
        start = int(pointer) // index.dtype.itemsize
        yield np.asarray(tokens[start : start + int(count)])
