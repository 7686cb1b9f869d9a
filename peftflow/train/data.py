"""Reading binidx training data the way RWKV-PEFT's `--dataload pad` loader does."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftflow.errors import DataError, MissingInputError

MAGIC = b"MMIDIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32,
          7: np.float64, 8: np.uint16}
IGNORE = -100  # target id the loss skips (torch's cross-entropy ignore_index)


def split_prefix(prefix: str | Path) -> Path:
    """Accept PREFIX, PREFIX.bin or PREFIX.idx; return PREFIX (absolute)."""
    path = Path(prefix).expanduser()
    if path.suffix in (".bin", ".idx"):
        path = path.with_suffix("")
    return path.resolve()


def files_of(prefix: str | Path) -> tuple[Path, Path]:
    base = split_prefix(prefix)
    bin_path, idx_path = Path(f"{base}.bin"), Path(f"{base}.idx")
    for path in (bin_path, idx_path):
        if not path.is_file():
            raise MissingInputError(
                f"{path}: binidx file not found (data prefix {base}); run prepare_dataset "
                "first or pass the prefix it reported (without .bin/.idx)"
            )
    return bin_path, idx_path


@dataclass(frozen=True)
class BinIdx:
    """Documents of a binidx pair: sizes (tokens incl. EOD) and byte offsets into the .bin."""

    prefix: Path
    dtype: np.dtype
    sizes: np.ndarray
    pointers: np.ndarray
    tokens: np.ndarray  # the whole .bin, memory-mapped

    def __len__(self) -> int:
        return len(self.sizes)

    def pad_sample(self, i: int, ctx_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) of document i as RWKV-PEFT's pad loader builds them.

        It reads ctx_len+1 tokens from the document's start (running into the following
        documents, wrapping to the first if the file ends) and masks every target past the
        document's own tokens, so only the document (and its EOD) is learned.
        """
        need = ctx_len + 1
        start = int(self.pointers[i]) // self.dtype.itemsize
        chunk = self.tokens[start:start + need].astype(np.int64)
        if len(chunk) < need:
            chunk = np.concatenate([chunk, self.tokens[: need - len(chunk)].astype(np.int64)])
        keep = min(int(self.sizes[i]), need)
        target = chunk[1:].copy()
        target[keep - 1:] = IGNORE
        return chunk[:-1], target


def open_binidx(prefix: str | Path) -> BinIdx:
    bin_path, idx_path = files_of(prefix)
    raw = idx_path.read_bytes()
    if raw[:9] != MAGIC or len(raw) < 34:
        raise DataError(f"{idx_path}: not a binidx index (magic {raw[:9]!r}); rebuild it with "
                        "prepare_dataset")
    (version,) = struct.unpack_from("<Q", raw, 9)
    code = raw[17]
    (count,) = struct.unpack_from("<Q", raw, 18)
    if version != 1 or code not in DTYPES:
        raise DataError(f"{idx_path}: unsupported version {version} or dtype code {code}")
    dtype = np.dtype(DTYPES[code])
    try:
        sizes = np.frombuffer(raw, np.int32, count, 34)
        pointers = np.frombuffer(raw, np.int64, count, 34 + 4 * count)
    except ValueError:
        raise DataError(f"{idx_path}: truncated index ({len(raw)} bytes for {count} documents); "
                        "rebuild it with prepare_dataset") from None
    tokens = np.memmap(bin_path, dtype=dtype, mode="r")
    if count and int(pointers[-1]) // dtype.itemsize + int(sizes[-1]) > len(tokens):
        raise DataError(f"{bin_path}: shorter than its index says; rebuild with prepare_dataset")
    return BinIdx(split_prefix(prefix), dtype, sizes, pointers, tokens)


def check_enough(data: BinIdx, needed: int, where: str) -> None:
    """Pad mode reads documents 0..needed-1 every epoch; fewer raises IndexError upstream."""
    if len(data) < needed:
        raise DataError(
            f"{data.prefix}: {len(data)} documents, but {where} needs epoch_steps * micro_bsz = "
            f"{needed} (pad mode reads documents 0..{needed - 1} each epoch); lower epoch_steps "
            "or micro_bsz, or add data"
        )
