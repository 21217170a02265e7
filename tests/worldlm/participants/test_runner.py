"""Whole hierarchies in one process on the real embedded Kafka and Redis.

A two-level run lowers every client's validation perplexity; in a three-level tree a
federation takes its parent's backbone exactly and keeps its own key layers; the participants
of one process share one producer, one Redis pool and one reader per followed partition.
"""

from __future__ import annotations

import asyncio

import torch

from brokers.embedded import Servers
from brokers.fanout import fanouts
from brokers.kafka import producers
from brokers.shared import redis_pools
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from schemas.topics import Topics
from tests.worldlm.participants.helpers import broadcasts, endpoints, flat, hierarchy, settings
from worldlm.participants.runner import run_hierarchy
from worldlm.training.workbench import key_names


async def test_two_level_run_lowers_every_clients_validation_perplexity(
    servers: Servers, run_id: str
) -> None:
    h = flat(run_id, rounds=3, local_steps=3)
    async with asyncio.timeout(60):
        result = await run_hierarchy(h, endpoints(servers))

    root_rounds = sorted(r.round for r in result.reports if r.node == "root")
    assert root_rounds == [0, 1, 2]
    for client in ["en-0", "de-0"]:
        reports = [r for r in result.client_reports() if r.node == client]
        first, final = reports[0], reports[-1]
        assert first.values["version"] == 0 and not first.values["final"]
        assert final.values["final"] == 1.0 and final.values["version"] == 3
        assert final.values["val_ppl"] < first.values["val_ppl"], client
    assert set(result.final_ppl()) == {"en-0", "de-0"}
    # Every round closed at the quorum of both live clients, none by the deadline.
    for report in (r for r in result.reports if r.node == "root"):
        assert report.values["arrived"] == 2 and report.values["members"] == 2


async def test_federation_takes_parents_backbone_exactly_and_keeps_its_own_key_layers(
    servers: Servers, run_id: str
) -> None:
    h = hierarchy(
        run_id,
        federations={"root": {}, "latin": {"parent": "root"}, "germanic": {"parent": "root"}},
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "de-0": ("germanic", "lang-de"),
        },
        rounds=2,
        defaults={"internal_rounds": 1, "schedule": {"deadline_s": 30.0}},
    )
    async with asyncio.timeout(90):
        await run_hierarchy(h, endpoints(servers))

    kafka, topics = settings(servers, h), Topics(run_id)
    parts = h.run.partitions
    root = {
        b.delta.manifest.version: b.delta.tensors()
        for b in await broadcasts(kafka, topics.down("root"), "root", partitions=parts)
    }
    assert sorted(root) == [0, 1, 2]
    async with RedisState(servers.redis, Keyspace(run_id)) as state:
        for fed in ["latin", "germanic"]:
            key = key_names(h.run, h.federations[fed].policy)
            assert key, "the default split has key layers"
            own = await broadcasts(kafka, topics.down(fed), fed, partitions=parts)
            taken = [b for b in own if b.delta.manifest.metrics["parent_version"] > 0]
            # One parent exchange per root round (internal_rounds = 1).
            assert [int(b.delta.manifest.metrics["parent_version"]) for b in taken] == [1, 2]
            for b in taken:
                tensors = b.delta.tensors()
                parent = root[int(b.delta.manifest.metrics["parent_version"])]
                assert set(tensors) == set(parent)
                for name in set(tensors) - key:
                    assert torch.equal(tensors[name], parent[name]), (fed, name)
                overwritten = [n for n in key if torch.equal(tensors[n], parent[n])]
                assert overwritten == [], (fed, overwritten)
            # The final broadcast's key layers are the federation's own aggregate, the one it
            # wrote to the residual cache after its last round.
            final = taken[-1]
            assert final.delta.manifest.metrics["final"] == 1.0
            cached = await state.residuals.get(fed)
            assert cached is not None and set(cached.tensors) == key
            for name in key:
                assert torch.equal(final.delta.tensors()[name], cached.tensors[name]), name


async def test_participants_of_one_process_share_a_producer_a_redis_pool_and_readers(
    servers: Servers, run_id: str
) -> None:
    clients = {
        f"c{i}": ("a" if i % 2 else "b", "lang-en" if i % 2 else "lang-de") for i in range(6)
    }
    h = hierarchy(
        run_id,
        federations={"root": {}, "a": {"parent": "root"}, "b": {"parent": "root"}},
        clients=clients,
        rounds=2,
        defaults={"internal_rounds": 1, "local_steps": 1, "schedule": {"deadline_s": 60.0}},
    )
    opened = (producers.opened, redis_pools.opened)
    readers: list[int] = []
    async with asyncio.timeout(120):
        result = await run_hierarchy(
            h, endpoints(servers), on_report=lambda _: readers.append(fanouts.readers())
        )
    assert len(result.final_ppl()) == 6
    # Ten participants and the runner: one producer and one Redis pool between them, and one
    # reader per followed broadcast partition (root's, a's, b's), not one per follower.
    assert producers.opened - opened[0] == 1 and redis_pools.opened - opened[1] == 1
    assert 1 <= max(readers) <= 3
    # Every heartbeat kept up (no member expired) and every round closed at its full quorum.
    expected = {"root": 2.0, "a": 3.0, "b": 3.0}
    for report in (r for r in result.reports if r.role == "aggregator"):
        assert report.values["members"] == report.values["arrived"] == expected[report.node]
