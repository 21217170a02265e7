"""The built-in corpus: partitions on two axes with a data card, deterministic client splits."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from worldlm.training.corpus import (
    BUILTIN_ROOT,
    ClientSplit,
    client_split,
    load_documents,
    partitions,
    tokenizer_sample,
)

NAMES = [p.name for p in partitions()]


def test_builtin_corpus_has_at_least_8_partitions_on_two_axes() -> None:
    infos = partitions()
    assert len(infos) >= 8
    assert {p.axis for p in infos} == {"language", "domain"}
    languages = {p.language for p in infos if p.axis == "language"}
    assert len(languages) >= 6, languages
    domains = {p.domain for p in infos if p.axis == "domain"}
    assert len(domains) >= 4, domains
    assert all(p.language == "en" for p in infos if p.axis == "domain")


def test_every_partition_has_card_entry_with_source_license_and_true_size() -> None:
    for info in partitions():
        assert info.license.strip() and info.source.count(":") == 1 and info.version
        assert info.cleaning.strip()
        docs = load_documents(info.name)
        assert len(docs) == info.documents
        assert sum(len(d.encode("utf-8")) for d in docs) == info.bytes
        assert all(d.strip() for d in docs)


def test_data_card_markdown_lists_every_partition() -> None:
    card_md = (BUILTIN_ROOT / "DATA_CARD.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"| {name} |" in card_md


def test_shipped_corpus_stays_small() -> None:
    total = sum(f.stat().st_size for f in BUILTIN_ROOT.iterdir())
    assert total < 8 * 2**20


def test_tokenizer_sample_shares_no_document_with_any_partition() -> None:
    sample = set(tokenizer_sample())
    assert sample
    for name in NAMES:
        assert sample.isdisjoint(load_documents(name)), name


def test_load_documents_returns_a_fresh_list_each_call() -> None:
    first = load_documents(NAMES[0])
    first.clear()
    assert load_documents(NAMES[0])


@pytest.mark.parametrize("num_clients", [1, 3, 8])
def test_clients_of_a_partition_get_disjoint_shards_covering_it(num_clients: int) -> None:
    name = "lang-de"
    docs = load_documents(name)
    seen: list[str] = []
    for i in range(num_clients):
        split = client_split(name, i, num_clients)
        assert set(split.train).isdisjoint(split.validation)
        seen += split.train + split.validation
    assert len(seen) == len(set(seen)) == len(set(docs))


def test_split_is_deterministic_and_depends_on_seed() -> None:
    a = client_split("domain-drama", 2, 4, seed=7)
    b = client_split("domain-drama", 2, 4, seed=7)
    c = client_split("domain-drama", 2, 4, seed=8)
    assert a == b
    assert a.validation != c.validation


def test_validation_is_about_val_fraction_and_never_empty() -> None:
    split = client_split("domain-code", 0, 4, val_fraction=0.2)
    total = len(split.train) + len(split.validation)
    assert len(split.validation) == -(-total * 2 // 10)  # ceil(0.2 * total)
    tiny = client_split("domain-code", 0, 4, val_fraction=0.001)
    assert len(tiny.validation) == 1
    none = client_split("domain-code", 0, 4, val_fraction=0.0)
    assert none.validation == [] and none.train


def test_split_of_a_built_corpus_directory_reads_that_directory(tmp_path: Path) -> None:
    docs = [f"document number {i}" for i in range(10)]
    with lzma.open(tmp_path / "toy.jsonl.xz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": d, "origin": "x"}) + "\n" for d in docs)
    entry = {
        "name": "toy", "axis": "domain", "language": "en", "domain": "test",
        "file": "toy.jsonl.xz", "source": {"kind": "apt", "package": "toy"}, "version": "1",
        "license": "CC0-1.0", "cleaning": "none", "documents": 10, "bytes": 1,
    }  # fmt: skip
    (tmp_path / "card.json").write_text(json.dumps({"partitions": [entry]}))
    assert load_documents("toy", root=tmp_path) == docs
    split = client_split("toy", 1, 2, root=tmp_path)
    assert isinstance(split, ClientSplit)
    assert len(split.train) + len(split.validation) == 5


def test_unknown_partition_error_names_it_and_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown partition 'klingon'.*lang-de"):
        client_split("klingon", 0, 2)
    with pytest.raises(ValueError, match="klingon"):
        load_documents("klingon")


@pytest.mark.parametrize(
    ("index", "clients", "frac", "message"),
    [
        (2, 2, 0.1, r"client_index 2 outside \[0, 2\)"),
        (-1, 2, 0.1, "client_index -1"),
        (0, 0, 0.1, "num_clients must be >= 1"),
        (0, 2, 1.0, "val_fraction"),
        (0, 100_000, 0.1, "too few for 100000 clients"),
    ],
)
def test_bad_split_arguments_raise_value_error_naming_the_partition(
    index: int, clients: int, frac: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as err:
        client_split("lang-fr", index, clients, val_fraction=frac)
    assert "'lang-fr'" in str(err.value)


def test_missing_corpus_directory_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="worldlm data build"):
        partitions(tmp_path)


def test_an_opt_in_test_split_is_disjoint_and_leaves_the_default_split_unchanged() -> None:
    plain = client_split("lang-fr", 0, 2, val_fraction=0.1, seed=3)
    held = client_split("lang-fr", 0, 2, val_fraction=0.1, seed=3, test_fraction=0.1)
    assert plain.test == [] and held.test
    assert held.validation == plain.validation  # validation text is the same either way
    train, test = set(held.train), set(held.test)
    assert not train & test and not test & set(held.validation)
    assert set(plain.train) == train | test
