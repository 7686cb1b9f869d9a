"""The MMIDIDX writer reproduces json2binidx's files byte for byte; reader and streaming limits."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from peftflow.dataset import binidx
from peftflow.errors import IntegrityError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "testdata" / "json2binidx" / "sample_data_text_document"


def _golden_prefix() -> Path:
    if not Path(f"{GOLDEN}.idx").exists():
        pytest.skip(f"golden json2binidx files not found at {GOLDEN}.*")
    return GOLDEN


def test_writer_reproduces_json2binidx_sample_byte_for_byte(tmp_path: Path) -> None:
    golden = _golden_prefix()
    index = binidx.read_index(f"{golden}.idx")
    assert index.dtype == np.uint16 and len(index) == 7
    documents = list(binidx.read_documents(golden))
    binidx.write(tmp_path / "copy", documents, dtype=np.uint16)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"copy{suffix}").read_bytes() == Path(f"{golden}{suffix}").read_bytes()


def test_golden_index_has_the_documented_layout() -> None:
    raw = Path(f"{_golden_prefix()}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert int.from_bytes(raw[9:17], "little") == 1 and raw[17] == 8
    assert int.from_bytes(raw[18:26], "little") == 7 and int.from_bytes(raw[26:34], "little") == 8


def test_streaming_writer_across_many_blocks_matches_a_direct_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binidx, "_BLOCK", 3)  # force several index blocks
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(1, 65530, rng.integers(1, 9)), 0).astype(np.uint16)
            for _ in range(11)]
    with open(tmp_path / "s.bin", "wb") as bin_out, tempfile.TemporaryFile() as spool:
        writer = binidx.BinIdxWriter(bin_out, spool)
        for part in (docs[:4], docs[4:5], docs[5:]):  # arrives chunk by chunk
            writer.add(np.concatenate(part), np.array([d.size for d in part], dtype=np.int32))
        with open(tmp_path / "s.idx", "wb") as idx_out:
            writer.finish(idx_out)
    sizes = np.array([d.size for d in docs], dtype="<i4")
    pointers = np.concatenate(([0], np.cumsum(sizes)[:-1] * 2)).astype("<i8")
    expected = (b"MMIDIDX\x00\x00" + (1).to_bytes(8, "little") + bytes([8])
                + (11).to_bytes(8, "little") + (12).to_bytes(8, "little") + sizes.tobytes()
                + pointers.tobytes() + np.arange(12, dtype="<i8").tobytes())
    assert (tmp_path / "s.idx").read_bytes() == expected
    assert [d.tolist() for d in binidx.read_documents(tmp_path / "s")] == [d.tolist() for d in docs]


def test_empty_dataset_gives_a_valid_empty_index(tmp_path: Path) -> None:
    binidx.write(tmp_path / "e", [])
    assert len(binidx.read_index(tmp_path / "e.idx")) == 0
    assert list(binidx.read_documents(tmp_path / "e")) == []


def test_truncated_index_is_an_integrity_error(tmp_path: Path) -> None:
    binidx.write(tmp_path / "t", [np.array([5, 6, 0], dtype=np.uint16)])
    raw = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(raw[:-4])
    with pytest.raises(IntegrityError, match=r"t\.idx: .* bytes, expected"):
        binidx.read_index(tmp_path / "t.idx")


def test_bin_shorter_than_its_index_is_an_integrity_error(tmp_path: Path) -> None:
    binidx.write(tmp_path / "b", [np.array([5, 6, 0], dtype=np.uint16)])
    (tmp_path / "b.bin").write_bytes(b"\x05\x00")
    with pytest.raises(IntegrityError, match="index says 6"):
        list(binidx.read_documents(tmp_path / "b"))


def test_writer_refuses_sizes_that_do_not_add_up(tmp_path: Path) -> None:
    with open(tmp_path / "x.bin", "wb") as out, tempfile.TemporaryFile() as spool:
        writer = binidx.BinIdxWriter(out, spool)
        with pytest.raises(ValueError, match="sizes sum to 2"):
            writer.add(np.array([1, 2, 0], dtype=np.uint16), np.array([2], dtype=np.int32))
