"""A process's members heartbeat together: one Redis round trip per period for all of them."""

from __future__ import annotations

import asyncio
import functools

from brokers.embedded import Servers
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from worldlm.participants.heartbeats import Beat, heartbeats


async def test_twenty_members_stay_live_on_one_round_trip_per_period(
    servers: Servers, run_id: str
) -> None:
    rejoined: list[str] = []
    async with RedisState(servers.redis, Keyspace(run_id), shared=True) as state:
        beats = [
            Beat(state, "fed", f"m{i}", 1.0, "client", functools.partial(rejoined.append, f"m{i}"))
            for i in range(20)
        ]
        tasks = heartbeats.tasks()
        for beat in beats:
            assert await state.heartbeat("fed", beat.member, ttl_s=beat.ttl_s)  # joined
            heartbeats.add(beat, 0.2)
        assert heartbeats.tasks() == tasks + 1
        await asyncio.sleep(2.0)  # twice the TTL: only the shared beats keep them live
        group = heartbeats._groups[(id(asyncio.get_running_loop()), state.url, 0.2)]
        assert 3 <= group.rounds <= 11  # one per period for all twenty, not one per member
        roster = await state.roster("fed")
        assert len(roster.live) == 20 and not roster.expired and not rejoined
        for beat in beats:
            await heartbeats.remove(beat, 0.2)
        assert heartbeats.tasks() == tasks
        # A member that expired is told when it is renewed again (a long stall).
        await asyncio.sleep(1.5)
        assert len((await state.roster("fed")).expired) == 20
        heartbeats.add(beats[0], 0.2)
        await asyncio.sleep(0.6)
        await heartbeats.remove(beats[0], 0.2)
        assert rejoined == ["m0"]
