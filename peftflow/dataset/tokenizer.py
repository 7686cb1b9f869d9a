"""The RWKV World tokenizer: fast implementations, and the reference one they must equal.

All read the same vocabulary file, the one shipped in the `rwkv` package next to the
reference `TRIE_TOKENIZER`; tests/test_tokenizer.py proves the token ids identical for
ours (C, built at install) and for the pinned Rust package that stands in when no C
compiler was available.
"""

from __future__ import annotations

import functools
import importlib.metadata
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

import numpy as np

EOD = 0  # end of document; World token ids are 1..65529
VOCAB_SIZE = 65536  # model vocabulary, so ids fit uint16
NATIVE = "peftflow-worldtok"  # ours: a C double-array trie (peftflow/dataset/_worldtok.c)
FAST_PACKAGE = "pyrwkv-tokenizer"  # the Rust one, used when the C extension was not built
# (rwkv-tokenizer 0.5.2 gave identical ids at the same speed as pyrwkv-tokenizer;
# bench/bench_prepare.py --compare-tokenizers times all of them).
REFERENCE_PACKAGE = "rwkv"


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def vocab_path() -> Path:
    """The vocabulary of the reference implementation (rwkv/rwkv_vocab_v20230424.txt)."""
    import importlib.util

    spec = importlib.util.find_spec("rwkv")  # locate it without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the `rwkv` package (its vocabulary) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "rwkv_vocab_v20230424.txt"


@functools.lru_cache(maxsize=1)
def native() -> Any | None:
    """Our C tokenizer (0.15 s to build, 4x the Rust one's speed), or None when the install
    could not compile it (no C compiler)."""
    try:
        from peftflow.dataset import _worldtok  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return _worldtok.Tokenizer(str(vocab_path()))


@functools.lru_cache(maxsize=1)
def rust() -> Encoder:
    """The Rust World tokenizer (~0.3 s and ~210 MB to build)."""
    import pyrwkv_tokenizer

    encoder: Encoder = pyrwkv_tokenizer.WorldTokenizer(str(vocab_path()))
    return encoder


CHOICES = ("auto", "native", "rust")


def fast() -> Encoder:
    """The tokenizer PEFTFLOW_TOKENIZER picks: `auto` (default) is ours when it was built,
    else the Rust one; `native` insists on ours; `rust` forces the Rust one."""
    from peftflow import settings
    from peftflow.errors import ConfigError

    choice = settings.get().tokenizer
    if choice not in CHOICES:
        raise ConfigError(f"PEFTFLOW_TOKENIZER={choice!r}: use one of {', '.join(CHOICES)}")
    tok: Encoder | None = None if choice == "rust" else native()
    if tok is not None:
        return tok
    if choice == "native":
        raise ConfigError("PEFTFLOW_TOKENIZER=native, but the C tokenizer was not built: "
                          "install gcc and the Python headers and rerun ./setup_airflow.sh, "
                          "or unset PEFTFLOW_TOKENIZER to use the Rust one")
    return rust()


def implementation() -> str:
    return NATIVE if fast() is native() else FAST_PACKAGE


def encode_documents(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, sizes): every text's ids followed by EOD as uint16, and each document's
    length with its EOD as int32; without Python ints in between when ours is in use."""
    tok: Any = fast()
    if tok is native():
        tokens, sizes = tok.encode_documents(texts, EOD)
        return np.frombuffer(tokens, dtype=np.uint16), np.frombuffer(sizes, dtype=np.int32)
    documents = [tok.encode(text) for text in texts]
    size_array = np.fromiter(map(len, documents), dtype=np.int32, count=len(documents)) + 1
    for ids in documents:
        ids.append(EOD)
    return (np.fromiter(chain.from_iterable(documents), dtype=np.uint16,
                        count=int(size_array.sum())), size_array)


@functools.lru_cache(maxsize=1)
def reference() -> Any:
    """rwkv.rwkv_tokenizer.TRIE_TOKENIZER, the pure-Python reference (slow)."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(str(vocab_path()))


def decode_bytes(tokens: Any) -> bytes:
    """Token ids back to bytes (EOD 0 ends the text); the Rust decoders panic on split UTF-8."""
    table = reference().idx2token
    out = []
    for token in tokens:
        token = int(token)
        if token == EOD:
            break
        out.append(table[token])
    return b"".join(out)


def decode(tokens: Any) -> str:
    return decode_bytes(tokens).decode("utf-8")


def versions() -> dict[str, str]:
    """Package versions for status.json's `tools`."""
    found = {"tokenizer": implementation(), "tokenizer_vocab": vocab_path().name}
    if found["tokenizer"] == FAST_PACKAGE:
        found[FAST_PACKAGE] = importlib.metadata.version(FAST_PACKAGE)
    return found
