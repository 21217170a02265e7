"""The audit checks a run's exactly-once accounting from its topics: every update a child
published is folded once, refused, superseded or dead-lettered; one that is none of these
is lost, one folded in two rounds is flagged. On the real servers, a live run with an update
republished by hand shows it as a duplicate, not as folded twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch
from aiokafka import TopicPartition

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from schemas.codec import delta_decoder
from schemas.delta import encode_delta
from schemas.messages import DeadLetter, DeltaManifest, Envelope, MetricsReport, RoundLedger
from schemas.topics import Topics
from tests.worldlm.participants.helpers import WORLDLM, endpoints, hierarchy, settings
from worldlm.audit import Audit
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.recording import audit_run, metrics
from worldlm.training.workbench import initial_weights

UP = "worldlm.r.fed.root.up"


def manifest(update_id: str, sender: str = "en-0") -> DeltaManifest:
    return DeltaManifest(
        envelope=Envelope(run="r", sender=sender, federation="root"),
        update_id=update_id,
        kind="update",
        tensors=(),
        total_bytes=0,
        content_hash="",
        chunk_size=1,
        chunk_count=1,
        base_version=0,
    )


def report(round: int, ledger: RoundLedger) -> MetricsReport:
    return MetricsReport(
        envelope=Envelope(run="r", sender="root", federation="root"),
        round=round,
        node="root",
        role="aggregator",
        ledger=ledger,
    )


def test_every_published_update_accounted_for_passes() -> None:
    audit = Audit({"root": UP})
    for offset, uid in enumerate(["a", "b", "c", "d"]):
        audit.record(UP, 0, offset, manifest(uid))
    audit.report(
        report(0, RoundLedger(folded=("a",), superseded=("b",), offsets={f"{UP}:0": (0, 2)}))
    )
    audit.report(
        report(1, RoundLedger(folded=("d",), refused={"c": "stale"}, offsets={f"{UP}:0": (2, 4)}))
    )
    table = audit.table()
    assert table.ok and not table.lost and not table.unread
    assert [(r.round, r.published, r.folded, r.superseded, r.stale) for r in table.rows] == [
        (0, 2, 1, 1, 0),
        (1, 2, 1, 0, 1),
    ]


def test_an_update_nobody_accounted_for_is_lost_and_one_past_the_last_close_unread() -> None:
    audit = Audit({"root": UP})
    for offset, uid in enumerate(["a", "gone", "late"]):
        audit.record(UP, 0, offset, manifest(uid))
    audit.report(report(0, RoundLedger(folded=("a",), offsets={f"{UP}:0": (0, 2)})))
    table = audit.table()
    assert table.lost == {"root": ["gone"]}
    assert table.unread == {"root": ["late"]}
    assert not table.ok
    assert "LOST root gone" in table.render()


def test_a_dead_lettered_update_is_accounted_for_by_the_record_it_names() -> None:
    audit = Audit({"root": UP})
    audit.record(UP, 1, 7, manifest("x"))
    audit.report(report(0, RoundLedger(dead_lettered=1, offsets={f"{UP}:1": (0, 9)})))
    letter = DeadLetter(
        envelope=Envelope(run="r", sender="root", federation=""),
        reason="tampered_chunk",
        detail="",
        source_topic=UP,
        source_partition=1,
        source_offset=7,
    )
    audit.dead_letter(letter)
    assert audit.table().ok


def test_an_update_folded_in_two_rounds_is_flagged() -> None:
    audit = Audit({"root": UP})
    audit.record(UP, 0, 0, manifest("a"))
    audit.report(report(0, RoundLedger(folded=("a",), offsets={f"{UP}:0": (0, 1)})))
    audit.report(report(1, RoundLedger(folded=("a",), offsets={f"{UP}:0": (1, 1)})))
    audit.report(report(1, RoundLedger(folded=("a",))))  # the same round again: noted only
    table = audit.table()
    assert table.folded_twice == {"root": {"a": [0, 1]}}
    assert table.repeated_reports == [("root", 1)]
    assert not table.ok


# -- on the real servers -----------------------------------------------------------------


async def update_records(kafka: KafkaSettings, topic: str, sender: str) -> list[bytes]:
    """The raw records (manifest and chunks) of ``sender``'s first update, once all are in."""
    start = {TopicPartition(topic, p): 0 for p in range(kafka.partitions)}
    found: dict[str, list[bytes]] = {}
    expected: dict[str, int] = {}
    async with PartitionReader(kafka, start) as reader:
        while True:
            for record in await reader.fetch(timeout_ms=200):
                message = delta_decoder.decode(record.value or b"")
                if message.envelope.sender != sender:
                    continue
                found.setdefault(message.update_id, []).append(record.value or b"")
                if isinstance(message, DeltaManifest):
                    expected[message.update_id] = message.chunk_count + 1
            for uid, values in found.items():
                if len(values) == expected.get(uid):
                    return values


async def test_a_republished_update_is_a_duplicate_not_folded_twice(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """Round 0 waits for both clients (min_quorum 2): en-0's update is republished by hand,
    and a no-samples update sent as de-0, before de-0 starts, so the aggregator reads both
    before it can close the round."""
    h = hierarchy(
        run_id,
        federations={"root": {}},
        clients={"en-0": ("root", "lang-en"), "de-0": ("root", "lang-de")},
        rounds=2,
        defaults={"schedule": {"quorum": 1.0, "min_quorum": 2, "deadline_s": 120.0}},
    )
    ep, topics, kafka = endpoints(servers), Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path)
    first, second = ClientParticipant(h, ep, "en-0"), ClientParticipant(h, ep, "de-0")
    name, like = next(iter(initial_weights(h.run).items()))
    empty = encode_delta(
        {name: torch.ones_like(like)},
        envelope=Envelope(run=run_id, sender="de-0", federation="root"),
        kind="update",
        base_version=0,
        sample_count=0,
    )
    async with asyncio.timeout(300), asyncio.TaskGroup() as group:
        group.create_task(aggregator.run())
        group.create_task(first.run())
        values = await update_records(kafka, topics.up("root"), "en-0")
        async with Producer(kafka) as producer:
            for value in values:
                await producer.send(topics.up("root"), value, key="root")
            await publish_delta(producer, topics.up("root"), "root", empty)
        group.create_task(second.run())

    table = await audit_run(servers.kafka, run_id, redis=servers.redis)
    rows = {r.round: r for r in table.rows if r.federation == "root"}
    assert sorted(rows) == [0, 1]
    # Round 0: en-0, the no-samples update and de-0 published; en-0 once more, by hand.
    r0 = rows[0]
    assert (r0.published, r0.folded, r0.duplicates, r0.refused, r0.dead_lettered) == (3, 2, 1, 1, 1)
    assert (rows[1].published, rows[1].folded, rows[1].duplicates) == (2, 2, 0)
    assert r0.arrived_redis == 2
    assert table.ok and not table.lost and not table.unread and not table.folded_twice
    # The round's metrics carry the same accounting, and the offsets the ledgers cover join up.
    root = sorted(
        (r for r in await metrics(kafka, topics) if r.node == "root"), key=lambda r: r.round
    )
    assert [r.values["round_duplicates"] for r in root] == [1.0, 0.0]
    assert [r.values["round_accepted"] for r in root] == [2.0, 2.0]
    assert [r.values["round_dead_lettered"] for r in root] == [1.0, 0.0]
    spans = [next(iter(r.ledger.offsets.values())) for r in root if r.ledger is not None]
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] > spans[1][0]
    assert aggregator.core.counters["updates_duplicate"] == 1

    # The command prints the same table and exits 0.
    proc = await asyncio.create_subprocess_exec(
        WORLDLM, "audit", run_id, "--kafka", servers.kafka, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "ok: nothing lost, nothing folded twice" in out.decode()
