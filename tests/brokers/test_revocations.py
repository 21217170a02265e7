"""The revocation chain on a real redis-server: what the admin signs counts, what anyone else
writes there is ignored, counted and logged, and erasing the list revokes nothing back."""

from __future__ import annotations

import asyncio

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from brokers.revocations import Revocations
from brokers.state import RedisState
from schemas.revocation import ChainMemory, make_entry, revocation_decoder

ADMIN = Ed25519PrivateKey.generate()


def reader(state: RedisState) -> Revocations:
    return Revocations(state, ADMIN.public_key())


async def test_an_admin_signed_revocation_is_honoured(state: RedisState) -> None:
    assert await reader(state).revoke(ADMIN, "fp-de", "de-0")
    assert not await reader(state).revoke(ADMIN, "fp-de", "de-0")  # already in the chain
    assert await reader(state).revoke(ADMIN, "fp-eu", "eu", "rotate")
    assert await reader(state).revoked() == {"fp-de": "de-0", "fp-eu": "eu"}
    key = state.keyspace.revoked_keys()
    raws = await state.redis.lrange(key, 0, -1)
    assert [revocation_decoder.decode(r).seq for r in raws] == [0, 1]
    assert 0 < await state.redis.ttl(key) <= state.ttl_s


async def test_entries_a_participant_writes_are_ignored_counted_and_logged_once(
    state: RedisState,
) -> None:
    key = state.keyspace.revoked_keys()
    mallory = Ed25519PrivateKey.generate()  # a participant's own signing key
    forged = make_entry(state.keyspace.run, ChainMemory(), "fp-eu", "eu", "revoke", mallory)
    unsigned = msgspec.msgpack.encode(
        msgspec.structs.replace(revocation_decoder.decode(forged), signature=b"")
    )
    # With write access to the key (no ACLs, or Redis 6), a participant appends what it can.
    await state.redis.rpush(key, forged, unsigned, b"fp-eu")
    with capture_logs() as logs:
        victim_reader = reader(state)
        assert await victim_reader.revoked() == {}
        assert await victim_reader.revoked() == {}  # read again: nothing reported twice
    ignored = [e for e in logs if e["event"] == "revocation_ignored"]
    assert [e["reason"] for e in ignored] == ["bad_signature", "unsigned", "malformed"]
    assert victim_reader.counters["revocations_ignored"] == 3
    # The admin's entry links past the junk to the verified head, and counts.
    assert await reader(state).revoke(ADMIN, "fp-de", "de-0")
    assert await victim_reader.revoked() == {"fp-de": "de-0"}
    assert victim_reader.counters == {"revocations_ignored": 3}


async def test_deleting_or_truncating_the_list_revokes_nothing_back_and_is_tampering(
    state: RedisState,
) -> None:
    key = state.keyspace.revoked_keys()
    for owner in ("de-0", "eu", "fr-0"):
        await reader(state).revoke(ADMIN, f"fp-{owner}", owner)
    with capture_logs() as logs:
        seen = reader(state)
        everything = await seen.revoked()
        await state.redis.ltrim(key, 0, 0)  # truncated to its first entry
        assert await seen.revoked() == everything
        assert await seen.revoked() == everything
        await state.redis.delete(key)  # erased
        assert await seen.revoked() == everything
    tampered = [e for e in logs if e["event"] == "revocations_tampered"]
    assert len(tampered) == 2 and seen.counters["revocations_tampered"] == 2
    assert len(everything) == 3
    # A restarted reader with the memory it had (an aggregator's checkpoint) keeps them too.
    restarted = reader(state)
    restarted.recall(seen.saved)
    assert await restarted.revoked() == everything
    # The admin revokes again on the erased list: a new chain, read by everyone.
    assert await reader(state).revoke(ADMIN, "fp-ru", "ru-0")
    assert await reader(state).revoked() == {"fp-ru": "ru-0"}
    assert await seen.revoked() == everything | {"fp-ru": "ru-0"}
    assert seen.counters["revocations_tampered"] == 2


async def test_a_value_of_another_type_revokes_nothing_and_the_admin_clears_it(
    state: RedisState,
) -> None:
    key = state.keyspace.revoked_keys()
    await state.redis.hset(key, "fp-eu", "eu")  # the probe's write, as the list once was
    fresh = reader(state)
    assert await fresh.revoked() == {}
    assert fresh.counters["revocations_tampered"] == 1
    assert await reader(state).revoke(ADMIN, "fp-de", "de-0")
    assert await fresh.revoked() == {"fp-de": "de-0"}


async def test_concurrent_admin_appends_both_land_linked(state: RedisState) -> None:
    added = await asyncio.gather(
        *(reader(state).revoke(ADMIN, f"fp-{i}", f"c-{i}") for i in range(4))
    )
    assert added == [True] * 4
    assert await reader(state).revoked() == {f"fp-{i}": f"c-{i}" for i in range(4)}
