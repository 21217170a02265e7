"""While a federation waits for its parent's broadcast it keeps reading its children: an
update published during the wait is admitted at once, not a round later (real servers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from schemas.delta import encode_delta
from schemas.messages import Envelope
from schemas.topics import Topics
from tests.worldlm.participants.helpers import endpoints, hierarchy, poll, settings
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.participants.runner import run_participants
from worldlm.training.workbench import initial_weights


async def test_a_child_update_published_while_waiting_for_the_parent_is_admitted_at_once(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    # The root needs two members and only latin ever reports: latin waits for it forever.
    h = hierarchy(
        run_id,
        federations={
            "root": {"schedule": {"min_quorum": 2, "deadline_s": 600.0}},
            "latin": {"parent": "root"},
            "slavic": {"parent": "root"},
        },
        clients={
            "fr-0": ("latin", "lang-fr"),
            "es-0": ("latin", "lang-es"),
            "ru-0": ("slavic", "lang-ru"),
        },
        rounds=2,
        defaults={"internal_rounds": 1, "residual": {"links": "none"}},
    )
    ep, topics = endpoints(servers), Topics(run_id)
    await prepare_run(h, ep)
    root = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    latin = AggregatorParticipant(h, ep, "latin", checkpoint_dir=tmp_path)
    clients = [ClientParticipant(h, ep, c) for c in ("fr-0", "es-0")]
    participants = [root, latin, *clients]
    name, like = next(iter(initial_weights(h.run).items()))

    async def waiting() -> bool:
        return latin.core.meta.awaiting_parent

    async def admitted() -> bool:
        return [p.sender for p in latin.core.pending] == ["fr-0"]

    async with asyncio.timeout(120), asyncio.TaskGroup() as group:
        for p in participants:
            group.create_task(p.run())
        await poll(waiting)
        assert latin.core.pending == []
        late = encode_delta(
            {name: torch.zeros_like(like)},
            envelope=Envelope(run=run_id, sender="fr-0", federation="latin"),
            kind="update",
            base_version=latin.core.meta.version,
            sample_count=8,
        )
        async with Producer(settings(servers, h)) as producer:
            await publish_delta(producer, topics.up("latin"), "latin", late)
        await poll(admitted)
        assert latin.core.meta.awaiting_parent  # admitted during the wait, not after it
        for p in participants:
            p.stop.set()


async def test_a_federation_whose_only_client_never_comes_ends_the_run_by_deadlines(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """slavic's only client never starts: its rounds close empty at their deadline, it
    submits nothing, and the root's rounds close by theirs; the whole run ends (before empty
    rounds closed, slavic waited for ever and so did the run)."""
    h = hierarchy(
        run_id,
        federations={"root": {}, "latin": {"parent": "root"}, "slavic": {"parent": "root"}},
        clients={"fr-0": ("latin", "lang-fr"), "ru-0": ("slavic", "lang-ru")},
        rounds=2,
        defaults={
            "internal_rounds": 1,
            "local_steps": 1,
            "residual": {"links": "none"},
            "schedule": {"deadline_s": 4.0},
        },
    )
    ep = endpoints(servers)
    await prepare_run(h, ep)
    aggregators = [
        AggregatorParticipant(h, ep, f, checkpoint_dir=tmp_path)
        for f in ("root", "latin", "slavic")
    ]
    client = ClientParticipant(h, ep, "fr-0")  # ru-0 never comes
    async with asyncio.timeout(120):
        await run_participants([*aggregators, client])
    root, latin, slavic = (a.core for a in aggregators)
    assert root.meta.final and latin.meta.final and slavic.meta.final
    assert slavic.counters["rounds_empty"] >= 1 and slavic.counters["submissions_skipped"] >= 1
    assert slavic.counters["rounds_empty"] == slavic.counters["rounds_closed"]
    assert root.counters["rejected"] == 0  # nothing bogus went up
    assert client.rounds >= 1  # latin's member trained meanwhile
