"""The embedded broker SIGKILLed mid-run and restarted (by its supervisor, as in ``worldlm run
--durable``) on its durable storage ends nothing: the run completes, its audit finds no update
lost and none folded twice, and every record written before the kill is still there, at the
same offset, after it. And a run's topics keep their records for its replay window (real
servers)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from brokers.embedded import EmbeddedKafka, Servers
from brokers.kafka import KafkaSettings
from schemas.topics import Topics
from tests.worldlm.participants.helpers import flat, flat_raw
from worldlm.config.hierarchy import parse
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.record.recording import audit_run, records, settings_for
from worldlm.chaos.watch import RunWatch

Position = tuple[str, int, int]
ROUNDS = 6


async def snapshot(bootstrap: str, run_id: str, federations: list[str]) -> dict[Position, bytes]:
    """Every record of the run's topics so far, by (topic, partition, offset)."""
    topics = Topics(run_id)
    names = [*topics.data_plane(federations), *topics.run_wide()]
    return {
        (r.topic, r.partition, r.offset): r.value or b""
        async for r in records(settings_for(bootstrap, run_id), names)
    }


async def test_a_broker_killed_mid_run_and_restarted_on_its_storage_loses_no_update(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = flat(run_id, rounds=ROUNDS, local_steps=3)
    kafka = EmbeddedKafka(storage=tmp_path / "log")
    await kafka.start()
    run: asyncio.Task[object] | None = None
    try:
        ep = Endpoints(kafka.bootstrap, servers.redis)
        await prepare_run(h, ep)  # before the watch is assigned the metrics partitions
        run = asyncio.create_task(run_hierarchy(h, ep))
        settings = KafkaSettings(kafka.bootstrap, partitions=h.run.partitions)
        async with RunWatch(settings, run_id, h.run.partitions) as watch:
            async with asyncio.timeout(90):
                await watch.wait_for(lambda r: r.node == "root" and r.round == 0)
            before = await snapshot(kafka.bootstrap, run_id, ["root"])
            pid = kafka.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            last = max(r.round for r in watch.of("root"))
            assert last < ROUNDS - 1, "the run was over before the kill"
            async with asyncio.timeout(240):
                result = await run
        # Its supervisor started it again on the same port and storage, once.
        assert kafka.restarted == 1 and kafka.running and kafka.pid != pid
        root_rounds = sorted({r.round for r in result.reports if r.node == "root"})
        assert root_rounds == list(range(ROUNDS))
        assert set(result.final_ppl()) == {"en-0", "de-0"}

        table = await audit_run(kafka.bootstrap, run_id, federations=["root"])
        assert table.ok, table.render()
        assert not table.lost and not table.folded_twice
        assert [row.round for row in table.rows] == list(range(ROUNDS))
        assert all(row.folded >= 1 for row in table.rows)

        after = await snapshot(kafka.bootstrap, run_id, ["root"])
        assert before, "nothing was recorded before the kill"
        assert {pos: after.get(pos) for pos in before} == before
    finally:
        if run is not None and not run.done():
            run.cancel()
        await kafka.stop()


async def test_a_runs_topics_keep_their_records_for_its_replay_window(
    servers: Servers, run_id: str
) -> None:
    raw = flat_raw(run_id)
    raw["run"]["replay_window_h"] = 36.0
    h = parse(raw)
    await prepare_run(h, Endpoints(servers.kafka, servers.redis))
    admin = AIOKafkaAdminClient(bootstrap_servers=servers.kafka)
    await admin.start()
    try:
        names = [*Topics(run_id).data_plane(["root"]), *Topics(run_id).run_wide()]
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    retention = {
        resource[3]: next((e[1] for e in resource[4] if e[0] == "retention.ms"), None)
        for resource in response.resources
    }
    assert retention == dict.fromkeys(names, str(36 * 3600 * 1000))
    assert parse({**raw, "run": {**raw["run"], "replay_window_h": -1}}).run.retention_ms == -1
