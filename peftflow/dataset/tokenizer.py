"""The RWKV World tokenizer: a fast Rust implementation, and the reference one it must equal.

Both read the same vocabulary file, the one shipped in the `rwkv` package next to the
reference `TRIE_TOKENIZER`; tests/test_tokenizer.py proves the token ids identical.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any, Protocol

EOD = 0  # end of document; World token ids are 1..65529
VOCAB_SIZE = 65536  # model vocabulary, so ids fit uint16
FAST_PACKAGE = "pyrwkv-tokenizer"  # rwkv-tokenizer 0.5.2 gave identical ids at the same speed
# (bench/bench_prepare.py --compare-tokenizers); this one is newer and already pinned.
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
def fast() -> Encoder:
    """The Rust World tokenizer, one per process (building it takes ~0.4 s and ~210 MB)."""
    import pyrwkv_tokenizer

    encoder: Encoder = pyrwkv_tokenizer.WorldTokenizer(str(vocab_path()))
    return encoder


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
    return {
        "tokenizer": FAST_PACKAGE,
        FAST_PACKAGE: importlib.metadata.version(FAST_PACKAGE),
        "tokenizer_vocab": vocab_path().name,
    }
