"""A redis-server restarted on the same port mid-run ends nothing: Redis calls are retried with
bounded backoff, heartbeats carry on and re-join, and the run completes (real servers)."""

from __future__ import annotations

import asyncio

from brokers.embedded import EmbeddedRedis, Servers
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from tests.worldlm.participants.helpers import flat, poll, settings
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.watch import RunWatch


async def test_a_redis_restart_mid_run_is_survived_and_heartbeats_rejoin(
    servers: Servers, run_id: str
) -> None:
    # Enough local work that the run outlives the 2 s outage and the rejoin check: with 3 steps
    # the rounds got fast enough (fetch wait 50 ms) that the clients had sometimes left the run
    # before the check (4 of 10 runs failed, 0 of 6 with 12 steps).
    h = flat(run_id, rounds=4, local_steps=12)
    redis = EmbeddedRedis()
    await redis.start()
    port = redis.port
    run: asyncio.Task[object] | None = None
    try:
        ep = Endpoints(servers.kafka, redis.url)
        # The run's topics are made before the watch starts. (Readers no longer create a
        # missing topic, which once left the run a metrics topic of Tansu's default 4
        # partitions where the watch read 2: brokers/kafka.py, PartitionReader.)
        await prepare_run(h, ep)
        run = asyncio.create_task(run_hierarchy(h, ep))
        async with RunWatch(settings(servers, h), run_id, h.run.partitions) as watch:
            async with asyncio.timeout(60):
                await watch.wait_for(lambda r: r.node == "root" and r.round == 0)
            await redis.stop()  # every key is gone with it: no persistence
            await asyncio.sleep(2.0)
            redis = EmbeddedRedis(port=port)
            await redis.start()
            # Heartbeats did not stop: both clients are live members again.
            async with RedisState(redis.url, Keyspace(run_id)) as state:

                async def both_live() -> bool:
                    return len((await state.roster("root")).live) == 2

                async with asyncio.timeout(30):
                    await poll(both_live, every_s=0.2)
            async with asyncio.timeout(120):
                result = await run
        root_rounds = sorted(r.round for r in result.reports if r.node == "root")
        assert root_rounds == [0, 1, 2, 3]
        assert set(result.final_ppl()) == {"en-0", "de-0"}
    finally:
        if run is not None and not run.done():
            run.cancel()
        await redis.stop()
