"""The WorldLM corpus at run time: partitions, their documents, and per-client splits.

Pure and offline. The built-in corpus ships in `worldlm/training/assets/corpus/` (see its
DATA_CARD.md); a larger one built by `worldlm data build --out DIR` is read with `root=DIR`.
Both have the same layout: `card.json` plus one `<partition>.jsonl.xz` per partition.

Splits. Each partition is dealt to `num_clients` clients: the documents are shuffled once with
`seed` and client i takes every num_clients-th document starting at i, so the clients of a
partition hold disjoint shards that differ in size by at most one document. Each client's
validation documents are the first ceil(val_fraction * shard) of its shard. A split depends only
on (partition content, client_index, num_clients, val_fraction, seed) — never on the training
method — so every method is evaluated on exactly the same text.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import math
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
BUILTIN_ROOT = ASSETS / "corpus"


@dataclass(frozen=True)
class PartitionInfo:
    """One partition as recorded in card.json: what it is, where it comes from, its size."""

    name: str
    axis: str  # "language" (same domain, different language) or "domain" (English, genre)
    language: str
    domain: str
    source: str  # "<kind>:<package>", e.g. "apt:manpages-de"
    version: str
    license: str
    documents: int
    bytes: int
    cleaning: str
    file: str


@dataclass(frozen=True)
class ClientSplit:
    """One client's share of a partition: disjoint training and validation documents."""

    train: list[str]
    validation: list[str]
    test: list[str] = dataclasses.field(default_factory=list)


def _root(root: Path | None) -> Path:
    return BUILTIN_ROOT if root is None else Path(root)


@cache
def _card(root: Path) -> dict[str, object]:
    path = root / "card.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no corpus at {root}: card.json missing (build one with `worldlm data build`)"
        )
    card = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(card, dict)
    return card


def partitions(root: Path | None = None) -> list[PartitionInfo]:
    """Every partition of the corpus at `root` (None: the built-in one), in card order."""
    entries = _card(_root(root))["partitions"]
    assert isinstance(entries, list)
    return [
        PartitionInfo(
            name=e["name"],
            axis=e["axis"],
            language=e["language"],
            domain=e["domain"],
            source=f"{e['source']['kind']}:{e['source']['package']}",
            version=e["version"],
            license=e["license"],
            documents=e["documents"],
            bytes=e["bytes"],
            cleaning=e["cleaning"],
            file=e["file"],
        )
        for e in entries
    ]


def partition_info(name: str, root: Path | None = None) -> PartitionInfo:
    """The card entry of partition `name`; ValueError naming it and the known ones otherwise."""
    infos = partitions(root)
    for info in infos:
        if info.name == name:
            return info
    known = ", ".join(i.name for i in infos)
    raise ValueError(f"unknown partition {name!r} in {_root(root)}; known partitions: {known}")


@cache
def _documents(name: str, root: Path) -> tuple[str, ...]:
    info = partition_info(name, root)
    with lzma.open(root / info.file, "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line)["text"] for line in fh if line.strip())


def load_documents(name: str, root: Path | None = None) -> list[str]:
    """The documents of partition `name`, in stored order (a fresh list: callers may mutate)."""
    return list(_documents(name, _root(root)))


def tokenizer_sample(root: Path | None = None) -> list[str]:
    """The documents held out of every partition to train the shared tokenizer."""
    r = _root(root)
    sample = _card(r)["tokenizer_sample"]
    assert isinstance(sample, dict)
    with lzma.open(r / sample["file"], "rt", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def client_split(
    name: str,
    client_index: int,
    num_clients: int,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    root: Path | None = None,
    test_fraction: float = 0.0,
) -> ClientSplit:
    """Client `client_index` of `num_clients`' disjoint shard of partition `name`, cut into
    train and validation documents (see the module docstring for the exact rule).

    Raises ValueError for an unknown partition, a client index outside [0, num_clients),
    a val_fraction outside [0, 1), or more clients than the shard rule can serve (every client
    needs at least one training document, plus one validation document if val_fraction > 0).
    """
    if num_clients < 1:
        raise ValueError(f"partition {name!r}: num_clients must be >= 1, got {num_clients}")
    if not 0 <= client_index < num_clients:
        raise ValueError(
            f"partition {name!r}: client_index {client_index} outside [0, {num_clients})"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"partition {name!r}: val_fraction must be in [0, 1), got {val_fraction}")
    docs = _documents(name, _root(root))
    need = 2 if val_fraction > 0 else 1
    if len(docs) < need * num_clients:
        raise ValueError(
            f"partition {name!r} has {len(docs)} documents: too few for {num_clients} clients "
            f"(each needs {need})"
        )
    order = list(range(len(docs)))
    # A Random of its own (not the global one): the split must not depend on who else
    # consumed random numbers before, and Random(int).shuffle is stable across Pythons.
    random.Random(seed).shuffle(order)
    shard = order[client_index::num_clients]
    n_val = min(len(shard) - 1, math.ceil(val_fraction * len(shard))) if val_fraction > 0 else 0
    # A held-out test split (opt-in: without it the split is exactly as before) comes after
    # the validation documents and before the training ones.
    n_test = min(len(shard) - 1 - n_val, math.ceil(test_fraction * len(shard)))
    n_test = max(0, n_test) if test_fraction > 0 else 0
    return ClientSplit(
        train=[docs[i] for i in shard[n_val + n_test :]],
        validation=[docs[i] for i in shard[:n_val]],
        test=[docs[i] for i in shard[n_val : n_val + n_test]],
    )
