"""A redis-server restarted on the same port mid-run ends nothing: Redis calls are retried with
bounded backoff, heartbeats carry on and re-join, and the run completes (real servers)."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from brokers.embedded import EmbeddedRedis, Servers
from tests.waiting import until
from tests.worldlm.participants.helpers import flat, settings
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.chaos.watch import RunWatch


async def test_a_redis_restart_mid_run_is_survived_and_heartbeats_rejoin(
    servers: Servers, run_id: str
) -> None:
    # The rejoin is checked by the members' own word (their "member_rejoined" line), which
    # stays said however fast the run then ends; a check of the roster once missed it when the
    # clients had already left the run (4 of 10 runs).
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
        with capture_logs() as logs:
            run = asyncio.create_task(run_hierarchy(h, ep))
            async with RunWatch(settings(servers, h), run_id, h.run.partitions) as watch:
                async with asyncio.timeout(60):
                    await watch.wait_for(lambda r: r.node == "root" and r.round == 0)
            await redis.stop()  # every key is gone with it: no persistence
            await asyncio.sleep(2.0)  # the outage under test, not a wait for a phase
            redis = EmbeddedRedis(port=port)
            await redis.start()

            def rejoined() -> set[str]:
                return {e["node"] for e in logs if e["event"] == "member_rejoined"}

            # Heartbeats did not stop: both clients found themselves gone and joined again.
            await until(lambda: rejoined() >= {"en-0", "de-0"}, what="both clients rejoining")
            async with asyncio.timeout(120):
                result = await run
        root_rounds = sorted(r.round for r in result.reports if r.node == "root")
        assert root_rounds == [0, 1, 2, 3]
        assert set(result.final_ppl()) == {"en-0", "de-0"}
    finally:
        if run is not None and not run.done():
            run.cancel()
        await redis.stop()
