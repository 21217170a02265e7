"""The one tokenizer shared by every participant of a run: byte-level BPE.

Why byte-level BPE: every string is a byte sequence, so any text in any shipped language
(CJK, Cyrillic, accents, tabs, newlines) encodes without an unknown token and decodes back
exactly. Why 4096 merges-and-bytes: the tiny models of tests and demos keep ~1M parameters,
and a 4096 x d embedding is already a large share of that.

Why trained on the tokenizer sample: the shared tokenizer must not be fitted to any client's
data (that would leak a client's text into a shared artifact before training starts). The corpus
builder holds ~4% of documents (chosen by content hash) out of every partition into
`assets/corpus/tokenizer_sample.jsonl.xz`; the tokenizer is trained on that sample only, which
still covers every script the clients use. Re-training gives a byte-identical tokenizer.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import ByteLevel as ByteLevelDecoder
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel
from tokenizers.trainers import BpeTrainer

TOKENIZER_PATH = Path(__file__).parent / "assets" / "tokenizer.json"
DEFAULT_VOCAB_SIZE = 4096
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2


class Tokenizer:
    """A thin typed wrapper over a `tokenizers.Tokenizer` with the run's special tokens."""

    def __init__(self, hf: HFTokenizer) -> None:
        self._hf = hf
        ids = [hf.token_to_id(t) for t in SPECIAL_TOKENS]
        found = [i for i in ids if i is not None]
        if len(found) != len(SPECIAL_TOKENS):
            raise ValueError(f"tokenizer lacks special tokens {SPECIAL_TOKENS}")
        self.eos_id, self.bos_id, self.pad_id = found

    @classmethod
    def from_file(cls, path: Path) -> Tokenizer:
        """Load a tokenizer.json written by `save`."""
        return cls(HFTokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (the embedding table's size)."""
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (parallel in the Rust library)."""
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; exact inverse of `encode` (special tokens decode to their text)."""
        return str(self._hf.decode(list(ids), skip_special_tokens=False))

    def to_json(self) -> str:
        """The tokenizer.json content (stable: the same tokenizer gives the same string)."""
        return str(self._hf.to_str(pretty=True))

    def save(self, path: Path) -> None:
        """Write tokenizer.json to `path`."""
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `vocab_size` ids (256 bytes, the special tokens
    and learned merges). Deterministic: the same texts give the same tokenizer.json."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}")
    hf = HFTokenizer(BPE())
    # No normalizer: NFC/NFKC or lower-casing would break exact round trips.
    hf.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = ByteLevelDecoder()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(list(texts), trainer=trainer)
    return Tokenizer(hf)


@cache
def _load(path: Path) -> Tokenizer:
    return Tokenizer.from_file(path)


def load_tokenizer(path: Path | None = None) -> Tokenizer:
    """The shared tokenizer shipped with the package (or the one at `path`); cached."""
    return _load(Path(path) if path is not None else TOKENIZER_PATH)


def encode_documents(tokenizer: Tokenizer, docs: Sequence[str]) -> torch.Tensor:
    """One 1-D LongTensor token stream: each document followed by EOS, so windows sampled
    from it see where documents end (and the last document ends like the others)."""
    stream: list[int] = []
    for ids in tokenizer.encode_batch(docs):
        stream.extend(ids)
        stream.append(tokenizer.eos_id)
    return torch.tensor(stream, dtype=torch.long)
