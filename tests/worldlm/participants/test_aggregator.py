"""The aggregator shell on the real embedded servers (its decisions are the federation
core's, tested on plain tensors in test_federation.py): a malformed record is dead-lettered
while the round goes on, and a SIGKILLed aggregator process restarted from its checkpoint
loses no accepted update and counts none twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import tomli_w
import torch

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from brokers.state import RedisState
from schemas.codec import dead_letter_decoder
from schemas.delta import encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope
from schemas.topics import Topics
from tests.worldlm.participants.helpers import (
    endpoints,
    flat,
    log_events,
    participant_process,
    poll,
    raw_config,
    read_topic,
    settings,
)
from worldlm.config.hierarchy import Hierarchy, load
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.training.workbench import initial_weights
from worldlm.chaos.watch import RunWatch

# -- on the real servers -----------------------------------------------------------------


async def test_malformed_update_record_is_dead_lettered_and_round_still_closes(
    servers: Servers, run_id: str
) -> None:
    h = flat(run_id, rounds=2)
    ep, topics, kafka = endpoints(servers), Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    garbage = b"\xc1 not a message \x00\xff" * 8
    async with Producer(kafka) as producer:
        sent = await producer.send(topics.up("root"), garbage, key="root")
    async with asyncio.timeout(60):
        result = await run_hierarchy(h, ep)

    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert len(letters) == 1
    letter = letters[0]
    assert letter.reason == "malformed" and letter.envelope.sender == "root"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        topics.up("root"),
        sent.partition,
        sent.offset,
    )
    assert letter.payload == garbage
    root = {r.round: r.values for r in result.reports if r.node == "root"}
    assert sorted(root) == [0, 1]
    assert root[0]["arrived"] == 2
    assert (root[0]["unreadable"], root[0]["rejected"]) == (1, 0)  # the shell's, not the core's
    assert set(result.final_ppl()) == {"en-0", "de-0"}


async def test_an_aggregator_behind_its_partition_reports_the_lag_it_had(
    servers: Servers, run_id: str
) -> None:
    """40 records of 256 KiB wait before the run starts: intake reads ~1 MiB per fetch, so
    round 0 reports how far behind the partition's end it was (the high watermark)."""
    h = flat(run_id, rounds=2)
    ep, topics, kafka = endpoints(servers), Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    async with Producer(kafka) as producer:
        for i in range(40):
            await producer.send(
                topics.up("root"), bytes([0xC1]) * 256 * 1024 + bytes([i]), key="root"
            )
    async with asyncio.timeout(90):
        result = await run_hierarchy(h, ep)
    root = {r.round: r.values for r in result.reports if r.node == "root"}
    assert root[0]["lag"] > 10
    assert root[0]["unreadable"] == 40  # every one of them read and dead-lettered
    assert root[1]["lag"] < root[0]["lag"]


async def test_update_claiming_no_samples_is_dead_lettered_not_averaged(
    servers: Servers, run_id: str
) -> None:
    """Weight 0: alone in a round it would leave nothing to average and stop the aggregator."""
    h = flat(run_id, rounds=1)
    ep, topics, kafka = endpoints(servers), Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    name, like = next(iter(initial_weights(h.run).items()))
    empty = encode_delta(
        {name: torch.ones_like(like)},
        envelope=Envelope(run=run_id, sender="de-0", federation="root"),
        kind="update",
        base_version=0,
        sample_count=0,
    )
    async with Producer(kafka) as producer:
        await publish_delta(producer, topics.up("root"), "root", empty)
    async with asyncio.timeout(60):
        result = await run_hierarchy(h, ep)
    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert [(x.reason, x.detail) for x in letters] == [("no_samples", "de-0: sample count 0")]
    root = {r.round: r.values for r in result.reports if r.node == "root"}
    assert root[0]["arrived"] == 2 and root[0]["rejected"] == 1
    assert set(result.final_ppl()) == {"en-0", "de-0"}


async def root_process_setup(
    servers: Servers, run_id: str, tmp_path: Path, *, rounds: int
) -> tuple[Hierarchy, list[str], Path]:
    """A root with en-0 and de-0 whose rounds wait for both (min_quorum 2), its config on disk,
    and the `worldlm aggregator` arguments to run its aggregator as a process."""
    raw = raw_config(
        run_id,
        federations={"root": {}},
        clients={"en-0": ("root", "lang-en"), "de-0": ("root", "lang-de")},
        rounds=rounds,
        defaults={"schedule": {"quorum": 1.0, "min_quorum": 2, "deadline_s": 120.0}},
    )
    config = tmp_path / "worldlm.toml"
    config.write_text(tomli_w.dumps(raw))
    h = load(config)
    await prepare_run(h, endpoints(servers))
    checkpoints = tmp_path / "checkpoints"
    args = ["aggregator", "--config", str(config), "--node", "root", "--kafka", servers.kafka]
    args += ["--redis", servers.redis, "--checkpoint-dir", str(checkpoints), "--run-id", run_id]
    return h, args, checkpoints


@pytest.mark.parametrize("worst_moment", [False, True], ids=["as_killed", "worst_moment"])
async def test_aggregator_killed_mid_round_resumes_without_losing_or_double_counting(
    servers: Servers, run_id: str, tmp_path: Path, worst_moment: bool
) -> None:
    """``worst_moment`` widens the kill to the windows a SIGKILL can land in: after the
    update was checkpointed but before its offset moved past it (an interleaved, incomplete
    update holds the offset back) and before its arrival reached the Redis barrier."""
    # min_quorum 2: round 0 stays open with the first client's update until the second comes.
    h, args, checkpoints = await root_process_setup(servers, run_id, tmp_path, rounds=2)
    ep, kafka = endpoints(servers), settings(servers, h)
    first, second = ClientParticipant(h, ep, "en-0"), ClientParticipant(h, ep, "de-0")
    meta_file = checkpoints / run_id / "root" / "meta.json"
    async with (
        RedisState(servers.redis, Keyspace(run_id)) as state,
        RunWatch(kafka, run_id, h.run.partitions) as watch,
        asyncio.timeout(150),
    ):
        try:
            async with asyncio.TaskGroup() as group:
                async with participant_process(args, tmp_path / "agg-1.log") as killed:
                    group.create_task(first.run())

                    async def one_arrived() -> bool:
                        return (await state.barrier("root", 0)).arrived >= 1

                    await poll(one_arrived)
                    killed.kill()  # SIGKILL with en-0's update accepted, round 0 open
                    await killed.wait()
                before = json.loads(meta_file.read_text())
                barrier_before = await state.barrier("root", 0)
                if worst_moment:
                    meta_file.write_text(json.dumps(before | {"offsets": {}}))
                    await state.redis.srem(Keyspace(run_id).barrier_arrivals("root", 0), "en-0")
                async with participant_process(args, tmp_path / "agg-2.log") as restarted:
                    group.create_task(second.run())
                    await restarted.wait()
        finally:
            first.stop.set()
            second.stop.set()
        # The root reports each round before it broadcasts the next, in order on one partition.
        await watch.wait_for(lambda r: r.node == "root" and r.round == 1)
        await watch.wait_for(lambda r: r.node == "en-0" and r.values["final"] == 1.0)
        barriers = [await state.barrier("root", r) for r in (0, 1)]

    assert killed.returncode == -9 and restarted.returncode == 0
    assert barrier_before.members == {"en-0"} and not barrier_before.closed
    assert [p["sender"] for p in before["pending"]] == ["en-0"]
    resumed = [e for e in log_events(tmp_path / "agg-2.log") if e["event"] == "aggregator_resumed"]
    assert len(resumed) == 1 and resumed[0]["round"] == 0 and resumed[0]["pending"] == 1

    # Each round closed once, with every client's update exactly once.
    root = [r for r in watch.reports if r.node == "root"]
    assert sorted(r.round for r in root) == [0, 1]
    for report in root:
        assert report.values["arrived"] == 2 and report.values["accepted"] == 2
    for barrier in barriers:
        assert barrier.closed and barrier.members == {"en-0", "de-0"}
    # en-0 published round 0 once (before the kill); that update was not lost.
    assert [r.round for r in watch.of("en-0") if not r.values["final"]] == [0, 1]
    after = json.loads(meta_file.read_text())
    sent = first.node.counters["updates_sent"] + second.node.counters["updates_sent"]
    assert sent == 4
    assert after["counters"]["updates_accepted"] == sent
    assert after["counters"]["rounds_closed"] == 2
    assert len(after["seen"]) == len(set(after["seen"])) == sent
    assert after["pending"] == [] and after["final"] is True
    # Re-read after the rewind, en-0's update was recognised by its id and dropped.
    assert after["counters"].get("updates_duplicate", 0) == (1 if worst_moment else 0)


async def test_standby_replica_takes_over_when_the_leading_aggregator_is_killed(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """Two aggregator processes for one federation, one checkpoint directory: the second
    stands by; when the leader is SIGKILLed it takes the lease, resumes from the checkpoint
    and finishes the run with every round closed once and every update counted once."""
    h, args, checkpoints = await root_process_setup(servers, run_id, tmp_path, rounds=3)
    ep, kafka = endpoints(servers), settings(servers, h)
    clients = [ClientParticipant(h, ep, c) for c in ["en-0", "de-0"]]
    async with (
        RedisState(servers.redis, Keyspace(run_id)) as state,
        RunWatch(kafka, run_id, h.run.partitions) as watch,
        asyncio.timeout(150),
    ):
        async with (
            participant_process(args, tmp_path / "leader.log") as leader,
            asyncio.TaskGroup() as group,
        ):

            async def leading() -> str | None:
                return await state.leader("root")

            token = await poll(leading)
            assert f":{leader.pid}:" in token
            async with participant_process(args, tmp_path / "standby.log") as standby:
                await poll(lambda: _logged(tmp_path / "standby.log", "standing_by"))
                for c in clients:
                    group.create_task(c.run())
                await watch.wait_for(lambda r: r.node == "root" and r.round >= 0)
                leader.kill()  # mid-run: round 1 is open or about to be
                await leader.wait()
                await standby.wait()
        await watch.wait_for(lambda r: r.node == "root" and r.round == 2)

    assert leader.returncode == -9 and standby.returncode == 0
    took = [e for e in log_events(tmp_path / "standby.log") if e["event"] == "took_over_lead"]
    assert len(took) == 1 and f":{standby.pid}:" in took[0]["token"]
    root = [r for r in watch.reports if r.node == "root"]
    assert sorted(r.round for r in root) == [0, 1, 2]  # each round reported once
    assert all(r.values["arrived"] == 2 for r in root)
    after = json.loads((checkpoints / run_id / "root" / "meta.json").read_text())
    sent = sum(c.node.counters["updates_sent"] for c in clients)
    assert sent == 6 and after["counters"]["updates_accepted"] == sent
    assert len(after["seen"]) == len(set(after["seen"])) == sent
    assert after["final"] is True


async def _logged(log_file: Path, event: str) -> bool:
    return any(e.get("event") == event for e in log_events(log_file))


async def test_a_leader_whose_lease_was_taken_stops_without_publishing_or_releasing_it(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """Fencing: after a stall past its lease another replica leads; the old leader must find
    out at its next renewal and stop, leaving the lease and the model pointer alone."""
    h = flat(run_id, rounds=3)
    ep = endpoints(servers)
    await prepare_run(h, ep)
    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    async with RedisState(servers.redis, Keyspace(run_id)) as state, asyncio.timeout(60):
        task = asyncio.create_task(aggregator.run())

        async def leading_and_broadcast() -> bool:
            return (
                await state.leader("root") == aggregator.token
                and await state.model_version("root") is not None
            )

        await poll(leading_and_broadcast)
        await state.redis.set(Keyspace(run_id).leader("root"), "elsewhere:1:beef", px=60_000)
        await task  # no clients: it sits in round 0 until the renewal finds the lease gone
        pointer = await state.model_version("root")
        holder = await state.leader("root")
    assert aggregator.lost_lead
    assert holder == "elsewhere:1:beef"  # not released by the replica that lost it
    assert pointer is not None and pointer.version == 0  # nothing published after the loss
