"""Redis control state against a real redis-server: barriers, membership, pointers, leads."""

from __future__ import annotations

import asyncio

import pytest
import torch

from brokers.embedded import Servers
from brokers.state import RedisState, Roster
from schemas.keyspace import Keyspace
from tests.waiting import until


async def expired(state: RedisState, federation: str) -> Roster | None:
    """The roster once some member's heartbeat has expired (by the server's clock)."""
    roster = await state.roster(federation)
    return roster if roster.expired else None


async def test_50_concurrent_arrivals_are_each_counted_once_and_one_close_is_recorded(
    servers: Servers, run_id: str
) -> None:
    # 50 participants, each with its own connection, all arriving at once; quorum 30.
    states = [RedisState(servers.redis, Keyspace(run_id)) for _ in range(50)]
    await asyncio.gather(*(s.start() for s in states))
    try:
        arrivals = await asyncio.gather(
            *(s.arrive("eu", 1, f"client-{i}", quorum=30) for i, s in enumerate(states))
        )
        closes = await asyncio.gather(
            *(s.close_round("eu", 1, "quorum", f"x{i}") for i, s in enumerate(states[:10]))
        )
    finally:
        await asyncio.gather(*(s.stop() for s in states))
    assert all(a.accepted and not a.closed and a.quorum == 30 for a in arrivals)
    assert sorted(a.arrived for a in arrivals) == list(range(1, 51))  # atomic: no count twice
    assert sum(closes) == 1


async def test_duplicate_arrival_is_not_counted_twice(state: RedisState) -> None:
    first = await state.arrive("eu", 2, "a", quorum=3)
    again = await state.arrive("eu", 2, "a", quorum=3)
    assert first.accepted and not again.accepted
    assert again.arrived == 1 and not again.closed


async def test_arrivals_at_the_quorum_close_nothing_only_the_cores_close_does(
    state: RedisState,
) -> None:
    """Redis shows a barrier; the round core decides the close (an async round closes at its
    buffer, whatever the quorum) and records it with its reason."""
    for member in ["a", "b", "c"]:
        arrival = await state.arrive("eu", 1, member, quorum=2)
        assert arrival.accepted and not arrival.closed
    status = await state.barrier("eu", 1)
    assert (status.arrived, status.quorum, status.closed, status.reason) == (3, 2, False, "")
    assert await state.close_round("eu", 1, "buffer", "eu")
    status = await state.barrier("eu", 1)
    assert status.closed and status.reason == "buffer" and status.arrived == 3


async def test_deadline_close_happens_once_and_blocks_late_arrivals(state: RedisState) -> None:
    await state.arrive("eu", 5, "a", quorum=3)
    results = await asyncio.gather(
        *(state.close_round("eu", 5, "deadline", f"x{i}") for i in range(10))
    )
    assert sum(results) == 1
    late = await state.arrive("eu", 5, "b", quorum=3)
    assert not late.accepted and late.closed and late.quorum == 3 and late.arrived == 1
    status = await state.barrier("eu", 5)
    assert status.closed and status.reason == "deadline" and status.members == {"a"}


async def test_heartbeats_expire_and_expiry_is_reported_once(state: RedisState) -> None:
    assert await state.heartbeat("eu", "short", ttl_s=2)
    assert await state.heartbeat("eu", "long", ttl_s=60)
    assert not await state.heartbeat("eu", "long", ttl_s=60)  # renewal, not a join
    roster = await state.roster("eu")
    assert set(roster.live) == {"short", "long"} and roster.expired == ()
    roster = await until(lambda: expired(state, "eu"), what="short's heartbeat expiring")
    assert roster.live == ("long",) and roster.expired == ("short",)
    assert await state.purge_expired("eu") == ["short"]
    assert await state.purge_expired("eu") == []
    assert await state.heartbeat("eu", "short", ttl_s=30)  # rejoining counts as a join


async def test_leave_removes_member_at_once(state: RedisState) -> None:
    await state.heartbeat("eu", "a", ttl_s=30, role="client")
    assert (await state.member_info("eu"))["a"] == {"role": "client"}
    await state.leave("eu", "a")
    assert (await state.roster("eu")).live == ()
    assert await state.departed("eu") == {"a"}  # a clean leave is named: not waited for
    await state.heartbeat("eu", "b", ttl_s=0.3)  # b dies without a word: never departed
    await state.heartbeat("eu", "a", ttl_s=30, role="client")  # a comes back
    await until(lambda: expired(state, "eu"), what="b's heartbeat expiring")
    assert await state.purge_expired("eu") == ["b"]
    assert await state.departed("eu") == frozenset()


async def test_model_version_pointer_only_moves_forward(state: RedisState) -> None:
    assert await state.model_version("eu") is None
    assert await state.set_model_version("eu", 2, topic="t.down", partition=1, offset=40)
    assert not await state.set_model_version("eu", 1, topic="t.down", partition=1, offset=10)
    pointer = await state.model_version("eu")
    assert pointer is not None
    assert (pointer.version, pointer.topic, pointer.partition, pointer.offset) == (
        2,
        "t.down",
        1,
        40,
    )


async def test_staleness_counters_per_member(state: RedisState) -> None:
    await state.record_staleness("eu", "a", 0)
    await state.record_staleness("eu", "a", 2)
    await state.record_staleness("eu", "b", 1)
    assert await state.staleness("eu") == {"a": (2, 1), "b": (1, 1)}


async def test_every_key_written_has_a_ttl(state: RedisState) -> None:
    await state.arrive("eu", 1, "a", quorum=2)
    await state.heartbeat("eu", "a", ttl_s=5)
    await state.set_model_version("eu", 1, topic="t", partition=0, offset=0)
    await state.record_staleness("eu", "a", 1)
    await state.residuals.put("eu", 1, {"k": torch.zeros(100_000)})
    await state.lead("eu", "replica-a", ttl_s=5)
    keys = [k async for k in state.redis.scan_iter(match=f"{state.keyspace.ns}:*")]
    assert len(keys) >= 9
    ttls = [await state.redis.ttl(k) for k in keys]
    assert all(t > 0 for t in ttls), dict(zip(keys, ttls, strict=True))


async def test_unstarted_state_raises_clear_error(servers: Servers, run_id: str) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await RedisState(servers.redis, Keyspace(run_id)).arrive("eu", 1, "a", quorum=1)


async def test_lead_is_held_by_exactly_one_of_20_concurrent_replicas(state: RedisState) -> None:
    won = await asyncio.gather(*(state.lead("eu", f"r{i}", ttl_s=30) for i in range(20)))
    assert sum(won) == 1
    winner = f"r{won.index(True)}"
    assert await state.leader("eu") == winner
    assert await state.lead("eu", winner, ttl_s=30)  # renewing one's own lead
    assert not await state.lead("eu", "r-late", ttl_s=30)


async def test_lead_passes_on_after_expiry_or_resignation_and_only_its_holder_resigns(
    state: RedisState,
) -> None:
    assert await state.lead("eu", "a", ttl_s=2)
    assert not await state.lead("eu", "b", ttl_s=2)

    async def lapsed() -> bool:  # "a" stalled past its lease
        return await state.leader("eu") is None

    await until(lapsed, what="a's lease lapsing")
    assert await state.lead("eu", "b", ttl_s=30)
    assert not await state.lead("eu", "a", ttl_s=30)  # the old leader learns it lost
    assert not await state.resign("eu", "a")
    assert await state.leader("eu") == "b"
    assert await state.resign("eu", "b")
    assert await state.leader("eu") is None
    assert await state.lead("eu", "a", ttl_s=30)
