"""A process's members heartbeat together: one Redis round trip per period for all of them."""

from __future__ import annotations

import asyncio
import functools

from brokers.embedded import Servers
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from tests.waiting import until
from worldlm.participants.heartbeats import Beat, heartbeats


async def test_twenty_members_stay_live_on_one_round_trip_per_period(
    servers: Servers, run_id: str
) -> None:
    rejoined: list[str] = []
    loop = asyncio.get_running_loop()
    async with RedisState(servers.redis, Keyspace(run_id), shared=True) as state:
        beats = [
            Beat(state, "fed", f"m{i}", 1.0, "client", functools.partial(rejoined.append, f"m{i}"))
            for i in range(20)
        ]
        tasks = heartbeats.tasks()
        started = loop.time()
        for beat in beats:
            assert await state.heartbeat("fed", beat.member, ttl_s=beat.ttl_s)  # joined
            heartbeats.add(beat, 0.2)
        assert heartbeats.tasks() == tasks + 1
        group = heartbeats._groups[(id(loop), state.url, 0.2)]
        # 11 round trips, 0.2 s apart: past twice the TTL, only the shared beats kept them live
        # (a member that had expired would have been told it rejoined).
        await until(lambda: group.rounds >= 11, what="11 heartbeat round trips")
        assert group.rounds <= (loop.time() - started) / 0.2  # one per period for all twenty
        roster = await state.roster("fed")
        assert len(roster.live) == 20 and not roster.expired and not rejoined
        for beat in beats:
            await heartbeats.remove(beat, 0.2)
        assert heartbeats.tasks() == tasks

        # A member that expired is told when it is renewed again (a long stall).
        async def all_expired() -> bool:
            return len((await state.roster("fed")).expired) == 20

        await until(all_expired, what="the twenty heartbeats expiring")
        heartbeats.add(beats[0], 0.2)
        await until(lambda: rejoined, what="m0 told it rejoined")
        await heartbeats.remove(beats[0], 0.2)
        assert rejoined == ["m0"]
