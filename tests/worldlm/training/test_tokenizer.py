"""The shared tokenizer: exact round trips in every shipped language, deterministic training."""

from __future__ import annotations

import pytest
import torch

from worldlm.training.corpus import load_documents, partitions, tokenizer_sample
from worldlm.training.tokenizer import (
    TOKENIZER_PATH,
    encode_documents,
    load_tokenizer,
    train_tokenizer,
)


@pytest.mark.parametrize("name", [p.name for p in partitions()])
def test_tokenizer_round_trips_documents_of_every_partition_exactly(name: str) -> None:
    tok = load_tokenizer()
    docs = load_documents(name)[:40]
    for doc, ids in zip(docs, tok.encode_batch(docs), strict=True):
        assert tok.decode(ids) == doc
        assert tok.encode(doc) == ids


@pytest.mark.parametrize(
    "text",
    [
        "Grüße, Ça va? ¿Qué tal? Zażółć gęślą jaźń.",
        "Съешь же ещё этих мягких французских булок.",
        "日本語のテキスト、中文文本。全角　スペース",
        "  leading spaces\n\n\ttabs\r\nand CRLF  \n",
        "emoji 🙂 and combining e\u0301 and NBSP\u00a0here",
        "",
    ],
)
def test_tokenizer_round_trips_tricky_text_exactly(text: str) -> None:
    tok = load_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_and_vocab_size() -> None:
    tok = load_tokenizer()
    assert tok.vocab_size == 4096
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (0, 1, 2)
    assert max(max(tok.encode(d)) for d in load_documents("lang-zh")[:20]) < tok.vocab_size


def test_retraining_on_the_shipped_sample_reproduces_the_shipped_tokenizer() -> None:
    retrained = train_tokenizer(tokenizer_sample(), vocab_size=4096)
    assert retrained.to_json() + "\n" == TOKENIZER_PATH.read_text(encoding="utf-8")


def test_training_twice_gives_identical_tokenizers() -> None:
    texts = ["the quick brown fox jumps over the lazy dog"] * 5 + ["über naïve café"] * 3
    a, b = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300)
    assert a.to_json() == b.to_json()


def test_too_small_vocab_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


def test_encode_documents_puts_eos_after_each_document() -> None:
    tok = load_tokenizer()
    docs = ["first document", "второй документ", "第三"]
    stream = encode_documents(tok, docs)
    assert stream.dtype == torch.long and stream.dim() == 1
    eos_positions = (stream == tok.eos_id).nonzero().flatten().tolist()
    assert len(eos_positions) == len(docs) and eos_positions[-1] == len(stream) - 1
    pieces = torch.tensor_split(stream, [p + 1 for p in eos_positions[:-1]])
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == docs
