"""Fast World tokenizers: token-identical to the reference rwkv.rwkv_tokenizer.TRIE_TOKENIZER.

Every identity test runs for both: ours (C, `native`) and the Rust package it replaces when
no C compiler was available (`rust`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from peftflow.dataset import tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_LAMBADA = ROOT.parent / "shared" / "testdata" / "lambada" / "lambada_test.jsonl"

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:45 p.m.; isn't it?\n",
    "chinese": "我们在训练一个语言模型。人工智能正在改变世界，数据质量非常重要！",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю. Ёжик в тумане.",
    "code": ('def f(x: int) -> int:\n\t"""Square."""\n    return x ** 2  # comment\r\n'
             '{"a": [1, 2]}\n'),
    "emoji": "Ship it 🚀🔥 family 👨‍👩‍👧‍👦 flags 🇺🇦🇯🇵 skin 👍🏽 keycap 1️⃣ zwj 🏳️‍🌈",
    "mixed": "Ünïcödé — “quotes” … ½ ∑ ≠ ∞ 日本語 한국어 العربية עברית हिन्दी ไทย",
    "whitespace": "  leading\n\n\n\ttabs   and   spaces  \r\n trailing   ",
    "control": "bell\x07 escape\x1b del\x7f nbsp\xa0 zero-width\u200b bom\ufeff",
}


@pytest.fixture(params=["native", "rust"])
def fast(request: pytest.FixtureRequest) -> tokenizer.Encoder:
    if request.param == "rust":
        return tokenizer.rust()
    native = tokenizer.native()
    assert native is not None, ("the C tokenizer was not built: install a C compiler (gcc) "
                                "and the Python headers, then rerun ./setup_airflow.sh")
    encoder: tokenizer.Encoder = native
    return encoder


def _lambada_sample() -> list[str]:
    local = ROOT / "configs/eval/data/lambada_test.jsonl"
    path = SHARED_LAMBADA if SHARED_LAMBADA.exists() else local
    with open(path, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    return texts[::10]  # 516 passages spread over the set


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_fast_tokenizer_equals_reference_on(fast: tokenizer.Encoder, name: str) -> None:
    text = SAMPLES[name]
    assert fast.encode(text) == tokenizer.reference().encode(text)


def test_fast_tokenizer_equals_reference_on_a_lambada_sample(fast: tokenizer.Encoder) -> None:
    texts = _lambada_sample()
    assert len(texts) > 500
    ref = tokenizer.reference()
    assert [fast.encode(t) for t in texts] == [ref.encode(t) for t in texts]


def test_fast_tokenizer_equals_reference_on_random_unicode(fast: tokenizer.Encoder) -> None:
    """Random strings over ASCII, Latin, Cyrillic, CJK, emoji and rare planes."""
    rng = random.Random(20261127)
    ranges = [(0x20, 0x7E), (0x0A, 0x0D), (0xA0, 0x24F), (0x400, 0x4FF), (0x4E00, 0x9FFF),
              (0x1F300, 0x1FAFF), (0x10000, 0x10FFF), (0xE000, 0xE0FF)]
    ref = tokenizer.reference()
    for _ in range(300):
        text = "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(1, 80)))
        assert fast.encode(text) == ref.encode(text), text


def test_every_vocabulary_entry_encodes_to_itself(fast: tokenizer.Encoder) -> None:
    """Each token that is valid UTF-8 on its own is the single-token encoding of its text."""
    ref = tokenizer.reference()
    checked = 0
    for token_id, raw in ref.idx2token.items():
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert fast.encode(text) == ref.encode(text), (token_id, raw)
        checked += 1
    assert checked > 60000


def test_decode_inverts_encode_and_stops_at_eod() -> None:
    text = SAMPLES["emoji"] + SAMPLES["chinese"]
    ids = tokenizer.fast().encode(text)
    assert tokenizer.decode([*ids, tokenizer.EOD, 42]) == text
    assert max(ids) < tokenizer.VOCAB_SIZE and min(ids) >= 1


def test_documents_are_encoded_with_an_eod_after_each_and_their_sizes() -> None:
    texts = [SAMPLES["english"], SAMPLES["chinese"], "x", SAMPLES["emoji"]]
    tokens, sizes = tokenizer.encode_documents(texts)
    ref = tokenizer.reference()
    expected = [[*ref.encode(t), tokenizer.EOD] for t in texts]
    assert tokens.dtype == np.uint16 and sizes.dtype == np.int32
    assert tokens.tolist() == [i for doc in expected for i in doc]
    assert sizes.tolist() == [len(doc) for doc in expected]
    empty_tokens, empty_sizes = tokenizer.encode_documents([])
    assert empty_tokens.size == 0 and empty_sizes.size == 0


def test_the_c_tokenizer_names_the_vocabulary_line_it_cannot_read(tmp_path: Path) -> None:
    from peftflow.dataset import _worldtok  # type: ignore[attr-defined,unused-ignore]

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("1 'a' 1\n2 'b' 1\n3 'c\\q' 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt:3: not a vocabulary entry"):
        _worldtok.Tokenizer(str(vocab))
    vocab.write_text("1 'ab' 3\n", encoding="utf-8")  # the length disagrees
    with pytest.raises(ValueError, match=r"vocab.txt:1: "):
        _worldtok.Tokenizer(str(vocab))
    with pytest.raises(OSError):
        _worldtok.Tokenizer(str(tmp_path / "missing.txt"))


def test_tool_versions_name_the_tokenizer_in_use() -> None:
    versions = tokenizer.versions()
    assert versions["tokenizer"] == tokenizer.NATIVE
    assert versions["tokenizer_vocab"] == "rwkv_vocab_v20230424.txt"
