"""The audit checks a run's exactly-once accounting from its topics: every update a child
published is folded once, refused, superseded or dead-lettered; one that is none of these
is lost, one folded in two rounds is flagged. On the real servers, a live run with an update
republished by hand shows it as a duplicate, not as folded twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import torch
from aiokafka import TopicPartition

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from schemas.codec import delta_decoder
from schemas.delta import encode_delta
from schemas.messages import (
    DeadLetter,
    DeltaChunk,
    DeltaManifest,
    Envelope,
    MetricsReport,
    RoundLedger,
)
from schemas.topics import Topics
from tests.worldlm.participants.helpers import WORLDLM, endpoints, hierarchy, settings
from worldlm.record.audit import Audit, Flagged
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.client import ClientParticipant
from worldlm.participants.node import prepare_run
from worldlm.record.provenance import Provenance
from worldlm.record.recording import audit_run, metrics
from worldlm.training.workbench import initial_weights

UP = "worldlm.r.fed.root.up"


def manifest(update_id: str, sender: str = "en-0", chunks: int = 1) -> DeltaManifest:
    return DeltaManifest(
        envelope=Envelope(run="r", sender=sender, federation="root"),
        update_id=update_id,
        kind="update",
        tensors=(),
        total_bytes=0,
        content_hash="",
        chunk_size=1,
        chunk_count=chunks,
        base_version=0,
    )


def chunk(update_id: str, sender: str = "en-0", index: int = 0) -> DeltaChunk:
    envelope = Envelope(run="r", sender=sender, federation="root")
    return DeltaChunk(envelope, update_id, index, count=1, hash=0, data=memoryview(b""))


def publish(audit: Audit, offset: int, update_id: str, partition: int = 0) -> None:
    """A one-chunk update of en-0 keyed by its federation: the manifest at ``offset``, its
    chunk right after."""
    audit.record(UP, partition, offset, manifest(update_id), key=b"root")
    audit.record(UP, partition, offset + 1, chunk(update_id), key=b"root")


def report(round: int, ledger: RoundLedger) -> MetricsReport:
    return MetricsReport(
        envelope=Envelope(run="r", sender="root", federation="root"),
        round=round,
        node="root",
        role="aggregator",
        ledger=ledger,
    )


def ids(flagged: list[Flagged]) -> list[str]:
    return [f.update_id for f in flagged]


def test_every_published_update_accounted_for_passes() -> None:
    audit = Audit({"root": UP})
    for offset, uid in zip([0, 2, 4, 6], ["a", "b", "c", "d"], strict=True):
        publish(audit, offset, uid)
    audit.report(
        report(0, RoundLedger(folded=("a",), superseded=("b",), offsets={f"{UP}:0": (0, 4)}))
    )
    audit.report(
        report(1, RoundLedger(folded=("d",), refused={"c": "stale"}, offsets={f"{UP}:0": (4, 8)}))
    )
    table = audit.table()
    assert table.ok and not table.lost and not table.unread
    assert [(r.round, r.published, r.folded, r.superseded, r.stale) for r in table.rows] == [
        (0, 2, 1, 1, 0),
        (1, 2, 1, 0, 1),
    ]
    assert (table.published, table.matched) == ({"root": 4}, {"root": 4})


def test_an_update_nobody_accounted_for_is_lost_and_one_past_the_last_close_unread() -> None:
    audit = Audit({"root": UP})
    for offset, uid in zip([0, 2, 4], ["a", "gone", "late"], strict=True):
        publish(audit, offset, uid)
    audit.report(report(0, RoundLedger(folded=("a",), offsets={f"{UP}:0": (0, 4)})))
    table = audit.table()
    assert {f: ids(u) for f, u in table.lost.items()} == {"root": ["gone"]}
    assert {f: ids(u) for f, u in table.unread.items()} == {"root": ["late"]}
    assert not table.ok
    assert table.problems == [
        "LOST root gone from en-0 at p0@2: read by its aggregator, never folded, refused or "
        "dead-lettered"
    ]
    assert table.rows[0].published == 2  # a, and gone among the offsets round 0 read


def test_a_dead_lettered_update_is_accounted_for_by_the_record_it_names() -> None:
    audit = Audit({"root": UP})
    publish(audit, 7, "x", partition=1)
    audit.report(report(0, RoundLedger(dead_lettered=1, offsets={f"{UP}:1": (0, 9)})))
    letter = DeadLetter(
        envelope=Envelope(run="r", sender="root", federation=""),
        reason="tampered_chunk",
        detail="",
        source_topic=UP,
        source_partition=1,
        source_offset=8,
    )
    audit.dead_letter(letter)
    table = audit.table()
    assert table.ok, table.render()
    assert table.rows[0].published == 1


def test_an_update_folded_in_two_rounds_is_flagged() -> None:
    audit = Audit({"root": UP})
    publish(audit, 0, "a")
    audit.report(report(0, RoundLedger(folded=("a",), offsets={f"{UP}:0": (0, 2)})))
    audit.report(report(1, RoundLedger(folded=("a",), offsets={f"{UP}:0": (2, 2)})))
    audit.report(report(1, RoundLedger(folded=("a",))))  # the same round again: noted only
    table = audit.table()
    assert table.folded_twice == {"root": {"a": [0, 1]}}
    assert table.repeated_reports == [("root", 1)]
    assert not table.ok


def test_a_manifest_short_of_chunks_is_incomplete_and_holds_back_no_round() -> None:
    """The aggregator's window stays at the first incomplete update (it may commit no
    further): its rounds are charged with the updates their ledgers name all the same."""
    audit = Audit({"root": UP})
    audit.record(UP, 0, 0, manifest("half", chunks=2), key=b"root")
    audit.record(UP, 0, 1, chunk("half"), key=b"root")
    audit.record(UP, 0, 2, chunk("orphan", sender="de-0"), key=b"root")
    for offset, uid in zip([3, 5, 7, 9], ["a", "b", "c", "d"], strict=True):
        publish(audit, offset, uid)
    audit.unreadable(UP, 0, 11)
    audit.report(report(0, RoundLedger(folded=("a", "b"), offsets={f"{UP}:0": (0, 0)})))
    audit.report(report(1, RoundLedger(folded=("c", "d"), offsets={f"{UP}:0": (0, 0)})))
    publish(audit, 12, "gone")  # before e, which round 2 folded: read, and nobody decided it
    audit.record(UP, 0, 14, manifest("e"), key=b"root")
    audit.record(UP, 0, 15, chunk("e"), key=b"root")
    audit.report(report(2, RoundLedger(folded=("e",), offsets={f"{UP}:0": (0, 0)})))
    table = audit.table()
    rows = [(r.published, r.folded, r.incomplete, r.unreadable) for r in table.rows]
    assert rows == [(2, 2, 2, 0), (2, 2, 0, 0), (2, 1, 0, 1)]
    assert [(f.sender, f.update_id, f.reason) for f in table.incomplete] == [
        ("en-0", "half", "1 of 2 chunks"),
        ("de-0", "orphan", "1 chunk(s), no manifest"),
    ]
    assert {f: ids(u) for f, u in table.lost.items()} == {"root": ["gone"]}


def test_records_no_participant_could_have_published_are_foreign_never_lost() -> None:
    members = {"root": {"en-0", "de-0"}}
    audit = Audit({"root": UP}, Provenance("r", members))
    audit.record(UP, 0, 0, manifest("nobodys"), key=b"nobody")
    audit.record(UP, 0, 1, chunk("nobodys"), key=b"nobody")
    audit.record(UP, 0, 2, manifest("stranger", sender="mallory"), key=b"root")
    audit.record(UP, 0, 3, chunk("stranger", sender="mallory"), key=b"root")
    audit.record(UP, 1, 0, manifest("elsewhere"), key=b"root")  # a partition nobody reads
    audit.record(UP, 1, 1, chunk("elsewhere"), key=b"root")
    publish(audit, 4, "a")
    ledger = RoundLedger(folded=("a",), refused={"stranger": "unknown_sender"})
    audit.report(report(0, msgspec.structs.replace(ledger, offsets={f"{UP}:0": (0, 6)})))
    table = audit.table()
    assert table.ok, table.render()
    assert [(f.update_id, f.reason) for f in table.foreign] == [
        ("nobodys", "unread_key"),
        ("stranger", "not_a_member"),
        ("elsewhere", "unread_partition"),
    ]
    assert (table.rows[0].published, table.rows[0].foreign) == (1, 2)
    assert not table.lost and not table.unread


def test_nothing_published_matching_a_fold_is_not_ok() -> None:
    audit = Audit({"root": UP})
    publish(audit, 0, "a")
    publish(audit, 2, "b")
    audit.report(report(0, RoundLedger(folded=("x", "y"), offsets={f"{UP}:0": (0, 0)})))
    table = audit.table()
    assert not table.ok
    assert table.folded_unpublished == {
        "root": {
            "x": "no update with this id on the up topic",
            "y": "no update with this id on the up topic",
        }
    }
    assert table.problems[-1] == (
        "NOTHING MATCHED root: 2 updates published, none matched to a fold or a named refusal"
    )
    assert table.render().endswith("NOT OK: 3 problem(s)")


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
    # Every update was the run's clients', whole, and matched: nothing foreign or incomplete.
    assert (table.published, table.matched) == ({"root": 5}, {"root": 5})
    assert not table.foreign and not table.incomplete and table.unreadable == {"root": 0}
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
    assert "ok: every published update matched to one fold or a named refusal" in out.decode()
