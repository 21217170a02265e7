"""The revocation chain, pure: only entries the admin signed and linked count; everything
else is ignored and reported once; a reader never un-revokes what it verified."""

from __future__ import annotations

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.messages import SCHEMA_VERSION
from schemas.revocation import (
    GENESIS,
    ChainMemory,
    Revocation,
    RevocationChain,
    entry_hash,
    make_entry,
    revocation_decoder,
    signing_bytes,
)

ADMIN = Ed25519PrivateKey.generate()


def chain_of(*owners: str, key: Ed25519PrivateKey = ADMIN, run: str = "r") -> list[bytes]:
    """Entries revoking ``owners``' keys (fingerprint ``fp-<owner>``), linked in order."""
    head, raws = ChainMemory(), []
    for owner in owners:
        raw = make_entry(run, head, f"fp-{owner}", owner, "revoke", key)
        raws.append(raw)
        head = ChainMemory(head.seq + 1, entry_hash(raw))
    return raws


def reader(memory: ChainMemory | None = None) -> RevocationChain:
    return RevocationChain("r", ADMIN.public_key(), memory)


def test_an_admin_signed_linked_chain_is_honoured() -> None:
    raws = chain_of("de-0", "eu")
    reading = reader().read(raws)
    assert reading.revoked == {"fp-de-0": "de-0", "fp-eu": "eu"}
    assert reading.ignored == [] and reading.tampered is None
    first = revocation_decoder.decode(raws[0])
    assert (first.seq, first.prev, first.action, first.envelope.run) == (0, GENESIS, "revoke", "r")
    ADMIN.public_key().verify(first.signature, signing_bytes(first))  # raises if forged


def test_forged_unsigned_other_run_and_mislinked_entries_are_ignored_and_reported_once() -> None:
    genuine = chain_of("de-0")
    mallory = Ed25519PrivateKey.generate()  # a participant's own key
    head = ChainMemory(0, entry_hash(genuine[0]))
    forged = make_entry("r", head, "fp-eu", "eu", "revoke", mallory)
    decoded = revocation_decoder.decode(forged)
    unsigned = msgspec.msgpack.encode(msgspec.structs.replace(decoded, signature=b""))
    elsewhere = chain_of("eu", run="other")[0]  # the admin's, for another run
    replayed = genuine[0]  # the admin's signature, out of place
    skipped = make_entry("r", ChainMemory(5, GENESIS), "fp-eu", "eu", "revoke", ADMIN)
    junk = [forged, unsigned, elsewhere, replayed, skipped, b"\x00not an entry"]
    chain = reader()
    reading = chain.read([*genuine, *junk])
    assert reading.revoked == {"fp-de-0": "de-0"} and reading.tampered is None
    assert [i.reason for i in reading.ignored] == [
        "bad_signature",
        "unsigned",
        "other_run",
        "mislinked",
        "mislinked",
        "malformed",
    ]
    assert chain.read([*genuine, *junk]).ignored == []  # each reported once
    # The admin's next entry links to its verified head, past the junk, and counts.
    after = make_entry("r", chain.memory, "fp-eu", "eu", "revoke", ADMIN)
    assert chain.read([*genuine, *junk, after]).revoked == {"fp-de-0": "de-0", "fp-eu": "eu"}


def test_erasure_or_truncation_is_tampering_and_revokes_nothing_back() -> None:
    raws = chain_of("de-0", "eu", "fr-0")
    # deleted, truncated, replaced by another type, or a different history of its length
    for erased in ([], raws[:1], None, chain_of("x", "y", "z")):
        chain = reader()
        chain.read(raws)
        reading = chain.read(erased)
        assert reading.tampered is not None
        assert {"fp-de-0", "fp-eu", "fp-fr-0"} <= set(reading.revoked)
        assert chain.read(erased).tampered is None  # one change is reported once
    # After an erasure the admin starts the chain again: its entries count, nothing is lost.
    chain = reader()
    chain.read(raws)
    chain.read([])
    again = chain_of("ru-0")
    reading = chain.read(again)
    assert reading.tampered is None and set(reading.revoked) == {
        "fp-de-0",
        "fp-eu",
        "fp-fr-0",
        "fp-ru-0",
    }


def test_a_restarted_reader_that_recalls_its_memory_sees_the_erasure() -> None:
    raws = chain_of("de-0")
    before = reader()
    before.read(raws)
    saved = msgspec.to_builtins(before.memory)
    restarted = reader()
    restarted.recall(msgspec.convert(saved, ChainMemory))
    reading = restarted.read([])
    assert reading.tampered is not None and reading.revoked == {"fp-de-0": "de-0"}
    # Without the memory, a reader re-verifies from the list: it can be made to forget an
    # erased entry, never to believe a forged one.
    assert reader().read([]).revoked == {}


def test_an_entry_is_a_tagged_versioned_struct() -> None:
    entry = revocation_decoder.decode(chain_of("de-0")[0])
    assert isinstance(entry, Revocation)
    raw = msgspec.msgpack.decode(chain_of("de-0")[0])
    assert raw["type"] == "revocation" and raw["envelope"]["schema_version"] == SCHEMA_VERSION
