"""The ``async`` schedule on the real servers: rounds close as soon as ``buffer`` updates are
in (no barrier, no quorum), a late update is folded in with its staleness, and one staler
than the bound is dead-lettered while the federation goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from brokers.state import RedisState
from schemas.codec import dead_letter_decoder, event_decoder
from schemas.delta import encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope, RoundEvent
from schemas.topics import Topics
from tests.worldlm.participants.helpers import (
    endpoints,
    flat,
    read_topic,
    settings,
)
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.training.workbench import initial_weights
from worldlm.chaos.watch import RunWatch


@pytest.mark.parametrize(("bound", "accepted"), [(50, True), (1, False)], ids=["within", "past"])
async def test_async_rounds_close_per_buffer_and_a_stale_update_is_weighed_or_refused_by_bound(
    servers: Servers, run_id: str, tmp_path: Path, bound: int, accepted: bool
) -> None:
    # de-0 runs no client here: the test sends one old update in its name.
    schedule = {"mode": "async", "buffer": 1, "staleness_bound": bound, "staleness_exponent": 0.5}
    h = flat(run_id, rounds=6, schedule=schedule)
    ep, topics, kafka = endpoints(servers), Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    client = ClientParticipant(h, ep, "en-0")
    name, like = next(iter(initial_weights(h.run).items()))
    old = encode_delta(
        {name: torch.zeros_like(like)},
        envelope=Envelope(run=run_id, sender="de-0", federation="root"),
        kind="update",
        base_version=0,  # trained on the very first model
        sample_count=8,
    )
    async with (
        RunWatch(kafka, run_id, h.run.partitions) as watch,
        RedisState(servers.redis, Keyspace(run_id)) as state,
        asyncio.timeout(120),
    ):
        async with asyncio.TaskGroup() as group:
            group.create_task(aggregator.run())
            group.create_task(client.run())
            await watch.wait_for(lambda r: r.node == "root" and r.round >= 1)
            async with Producer(kafka) as producer:
                await publish_delta(producer, topics.up("root"), "root", old)
        staleness = await state.staleness("root")

    root = {r.round: r.values for r in watch.of("root")}
    assert sorted(root) == list(range(6))
    events = await read_topic(
        kafka, topics.events, event_decoder.decode, partitions=h.run.partitions
    )
    closed = [e for e in events if isinstance(e, RoundEvent) and e.action == "closed"]
    assert len(closed) == 6 and {e.reason for e in closed} == {"buffer"}
    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    if accepted:
        # Folded into a round with its staleness (version at close - 0 >= 2), not refused.
        assert letters == []
        assert max(v["staleness_max"] for v in root.values()) >= 2
        latest, stale_count = staleness["de-0"]
        assert latest >= 2 and stale_count == 1
    else:
        assert [letter.reason for letter in letters] == ["stale"]
        assert letters[0].detail.endswith("> bound 1")
        assert max(v["staleness_max"] for v in root.values()) == 0
        assert "de-0" not in staleness
    assert all(v["arrived"] >= 1 for v in root.values())
    assert client.rounds >= 5
