"""Clients come and go: a late joiner starts from the current model and is counted from then
on; a client killed with SIGKILL (a real separate process) does not stall its federation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tomli_w

from brokers.embedded import Servers
from brokers.state import RedisState
from schemas.codec import event_decoder
from schemas.keyspace import Keyspace
from schemas.messages import MembershipEvent, RoundEvent
from schemas.topics import Topics
from tests.worldlm.participants.helpers import (
    endpoints,
    hierarchy,
    participant_process,
    poll,
    raw_config,
    read_topic,
    settings,
)
from worldlm.config.hierarchy import load
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.chaos.watch import RunWatch


async def test_late_client_starts_from_current_model_and_is_counted_from_then_on(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = hierarchy(
        run_id,
        federations={"root": {}},
        clients={
            "en-0": ("root", "lang-en"),
            "de-0": ("root", "lang-de"),
            "fr-0": ("root", "lang-fr"),
        },
        rounds=50,  # an upper bound: the test stops the run once it has seen enough
        # rounds count the members heartbeating now (by default they would wait for fr-0)
        defaults={"schedule": {"deadline_s": 30.0, "wait_for": "live"}},
    )
    ep = endpoints(servers)
    await prepare_run(h, ep)
    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    early = [ClientParticipant(h, ep, c) for c in ["en-0", "de-0"]]
    late = ClientParticipant(h, ep, "fr-0")
    participants = [aggregator, *early, late]
    kafka = settings(servers, h)
    async with (
        RedisState(servers.redis, Keyspace(run_id)) as state,
        RunWatch(kafka, run_id, h.run.partitions) as watch,
        asyncio.timeout(90),
    ):
        try:
            async with asyncio.TaskGroup() as group:
                for p in [aggregator, *early]:
                    group.create_task(p.run())
                await watch.wait_for(lambda r: r.node == "root" and r.round >= 1)
                pointer = await state.model_version("root")
                group.create_task(late.run())
                joined = await watch.wait_for(lambda r: r.node == "fr-0")
                await watch.wait_for(lambda r: r.node == "root" and r.round >= joined.round + 2)
                for p in participants:
                    p.stop.set()
        finally:
            for p in participants:
                p.stop.set()
        counted = {r: await state.barrier("root", r) for r in (joined.round + 1, joined.round + 2)}

    # The newcomer began from the model Redis pointed at when it came, not from version 0.
    assert pointer is not None and pointer.version >= 1
    assert joined.values["version"] >= pointer.version
    root = {r.round: r.values for r in watch.of("root")}
    assert root[0]["members"] == 2 and root[0]["arrived"] == 2
    for r, barrier in counted.items():
        assert barrier.members == {"en-0", "de-0", "fr-0"}, r
        assert root[r]["members"] == 3 and root[r]["arrived"] == 3, r
    assert late.node.counters["updates_sent"] >= 2
    assert aggregator.node.counters["unreadable"] == 0


async def test_client_killed_mid_round_expires_and_round_closes_at_quorum_of_the_live(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    raw = raw_config(
        run_id,
        federations={"root": {}},
        clients={
            "en-0": ("root", "lang-en"),
            "de-0": ("root", "lang-de"),
            "fr-0": ("root", "lang-fr"),
        },
        rounds=4,
        defaults={"schedule": {"deadline_s": 60.0, "wait_for": "live"}},  # must not wait for it
    )
    config = tmp_path / "worldlm.toml"
    config.write_text(tomli_w.dumps(raw))
    h = load(config)
    ep = endpoints(servers)
    await prepare_run(h, ep)
    kafka = settings(servers, h)
    args = ["client", "--config", str(config), "--node", "fr-0", "--kafka", servers.kafka]
    args += ["--redis", servers.redis, "--run-id", run_id]
    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path / "ckpt")
    others = [ClientParticipant(h, ep, c) for c in ["en-0", "de-0"]]
    async with (
        RedisState(servers.redis, Keyspace(run_id)) as state,
        RunWatch(kafka, run_id, h.run.partitions) as watch,
        participant_process(args, tmp_path / "fr-0.log") as victim,
        asyncio.timeout(120),
    ):

        async def victim_is_live() -> bool:
            return "fr-0" in (await state.roster("root")).live

        await poll(victim_is_live)  # it counts towards the quorum from round 0
        try:
            async with asyncio.TaskGroup() as group:
                for p in [aggregator, *others]:
                    group.create_task(p.run())
                published = await watch.wait_for(lambda r: r.node == "fr-0")
                victim.kill()  # SIGKILL: no clean leave, its heartbeat just stops
                await victim.wait()
        finally:
            for p in [aggregator, *others]:
                p.stop.set()
        await watch.wait_for(lambda r: r.node == "root" and r.round == 3)
        roster = await state.roster("root")

    assert victim.returncode == -9
    assert "samples" in published.values  # it had trained and published an update
    topics = Topics(run_id)
    events = await read_topic(
        kafka, topics.events, event_decoder.decode, partitions=h.run.partitions
    )
    membership = [e for e in events if isinstance(e, MembershipEvent) and e.member == "fr-0"]
    actions = [e.action for e in membership]
    assert actions[0] == "joined" and actions[-1] == "expired" and "left" not in actions
    assert aggregator.node.counters["members_expired"] >= 1
    assert "fr-0" not in roster.live + roster.expired  # purged, reported once
    closed = {e.round: e for e in events if isinstance(e, RoundEvent) and e.action == "closed"}
    assert sorted(closed) == [0, 1, 2, 3]
    root = {r.round: r.values for r in watch.of("root")}
    # The last rounds closed with the two live clients, at the quorum, not at the deadline.
    last = max(root)
    assert root[last]["members"] == 2 and root[last]["arrived"] == 2
    assert closed[last].reason == "quorum"
    assert all(e.reason == "quorum" for e in closed.values())
