"""What a run left on Kafka, read back: the I/O shell of ``worldlm audit`` and ``worldlm replay``.

Every topic is read by explicit partition assignment from offset 0 up to each partition's
high watermark (a :class:`~brokers.kafka.PartitionReader`: no consumer group, no commits),
so reading a run changes nothing and ends by itself. Topic names come from
:class:`~schemas.topics.Topics`; a run's federations are those of its config or, without
one, those that have an up topic on the cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from brokers.admin import topic_partitions
from brokers.deltas import DeltaReceiver, Received
from brokers.kafka import KafkaSettings, PartitionReader
from brokers.state import RedisState
from schemas.codec import Decoder, dead_letter_decoder, delta_decoder, metrics_decoder
from schemas.compression import decompress
from schemas.delta import Reassembler
from schemas.errors import WireError
from schemas.keyspace import Keyspace
from schemas.messages import DeadLetter, DeltaManifest, MetricsReport
from schemas.sealing import Unsealer
from schemas.topics import Topics
from worldlm.record.audit import Audit, AuditTable
from worldlm.config.hierarchy import Hierarchy
from worldlm.security.keys import load_keyring
from worldlm.record.provenance import Provenance
from worldlm.record.replay import RecordedRound, RecordedUpdate, ReplayError

#: Empty fetches in a row after which a read ends although no end offset was reported.
QUIET_FETCHES = 50

T = TypeVar("T")


def settings_for(kafka: str, run: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=kafka, client_id=f"worldlm-reader-{run}")


async def _partitions(settings: KafkaSettings, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of those of ``topics`` that exist (a metadata read)."""
    existing = await topic_partitions(settings)
    return [TopicPartition(t, p) for t in topics if t in existing for p in range(existing[t])]


async def topic_names(settings: KafkaSettings) -> set[str]:
    return set(await topic_partitions(settings))


def federations_from(topics: Topics, names: set[str]) -> list[str]:
    """The federations that have an up topic among ``names`` (parsed through ``Topics``)."""
    probe = "federation0"
    head, _, tail = topics.up(probe).partition(probe)
    found = []
    for name in names:
        if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
            candidate = name[len(head) : len(name) - len(tail)]
            try:
                if topics.up(candidate) == name:
                    found.append(candidate)
            except ValueError:
                continue
    return sorted(found)


async def records(settings: KafkaSettings, topics: Sequence[str]) -> AsyncIterator[ConsumerRecord]:
    """Every record of ``topics``, up to each partition's end as fetches report it (the high
    watermark: Tansu's ListOffsets answers are not relied on). If the end is never reported,
    ``QUIET_FETCHES`` empty fetches in a row end the read."""
    tps = await _partitions(settings, topics)
    if not tps:
        return
    pending, position = set(tps), dict.fromkeys(tps, 0)
    async with PartitionReader(settings, dict.fromkeys(tps, 0)) as reader:
        idle = 0
        while pending and idle < QUIET_FETCHES:
            batch = await reader.fetch(timeout_ms=200)
            idle = 0 if batch else idle + 1
            for record in batch:
                position[TopicPartition(record.topic, record.partition)] = record.offset + 1
                yield record
            for tp in list(pending):
                end = reader.highwater(tp)
                if end is not None and position[tp] >= end:
                    pending.discard(tp)


async def _decoded(settings: KafkaSettings, topic: str, decoder: Decoder[T]) -> list[T]:
    """Every decodable record of ``topic``, in partition order (the others are skipped)."""
    found = []
    async for record in records(settings, [topic]):
        try:
            found.append(decoder.decode(record.value or b""))
        except WireError:
            continue
    return found


async def metrics(settings: KafkaSettings, topics: Topics) -> list[MetricsReport]:
    """Every decodable metrics report of the run, in partition order."""
    return await _decoded(settings, topics.metrics, metrics_decoder)


async def dead_letters(settings: KafkaSettings, topics: Topics) -> list[DeadLetter]:
    return await _decoded(settings, topics.dead_letter, dead_letter_decoder)


async def audit_run(
    kafka: str,
    run: str,
    *,
    federations: Sequence[str] | None = None,
    redis: str | None = None,
    hierarchy: Hierarchy | None = None,
    keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> AuditTable:
    """Read run ``run``'s up, metrics and dead-letter topics and check its accounting; with
    ``redis``, each round also shows how many arrivals its Redis barrier recorded (while the
    run's keys live). With the run's ``hierarchy``, only its participants' updates to their
    own parents count as published; with ``keys`` (sender -> signing public key), only those
    whose signature verifies (:mod:`worldlm.record.provenance`)."""
    topics = Topics(run)
    settings = settings_for(kafka, run)
    if federations is None and hierarchy is not None:
        federations = list(hierarchy.federations)
    feds = list(federations or federations_from(topics, await topic_names(settings)))
    provenance = Provenance.of(hierarchy, keys) if hierarchy else Provenance(run, keys=keys)
    audit = Audit({f: topics.up(f) for f in feds}, provenance)
    async for record in records(settings, [topics.up(f) for f in feds]):
        try:
            message = delta_decoder.decode(record.value or b"")
        except WireError:
            audit.unreadable(record.topic, record.partition, record.offset)
            continue
        audit.record(record.topic, record.partition, record.offset, message, key=record.key)
    for report in await metrics(settings, topics):
        audit.report(report)
    for letter in await dead_letters(settings, topics):
        audit.dead_letter(letter)
    table = audit.table()
    if redis is not None:
        async with RedisState(redis, Keyspace(run)) as state:
            for i, row in enumerate(table.rows):
                barrier = await state.barrier(row.federation, row.round)
                table.rows[i] = row.with_barrier(len(barrier.members))
    return table


@dataclass(frozen=True, eq=False)
class RawUpdate:
    """A complete update as it lies on an up topic (decoded, opened when sealed)."""

    federation: str
    offset: int
    received: Received

    @property
    def manifest(self) -> DeltaManifest:
        return self.received.delta.manifest


async def updates(
    settings: KafkaSettings, topics: Topics, federation: str, *, unsealer: Unsealer | None
) -> tuple[list[RawUpdate], list[str]]:
    """Every complete update on ``federation``'s up topic, in offset order (the first
    delivery of each id), and the reasons of records that could not be read."""
    receiver = DeltaReceiver(Reassembler(unsealer=unsealer))
    found: list[RawUpdate] = []
    problems: list[str] = []
    async for record in records(settings, [topics.up(federation)]):
        result = receiver.feed(record)
        if isinstance(result, Received) and result.delta.manifest.kind == "update":
            found.append(RawUpdate(federation, result.first_offset, result))
        elif result is not None and hasattr(result, "reason"):
            problems.append(result.reason)
    return found, problems


async def broadcast_manifests(
    settings: KafkaSettings, topics: Topics, federation: str
) -> list[DeltaManifest]:
    """The manifests of ``federation``'s broadcasts (their content hash names the model)."""
    found = []
    async for record in records(settings, [topics.down(federation)]):
        try:
            message = delta_decoder.decode(record.value or b"")
        except WireError:
            continue
        if isinstance(message, DeltaManifest) and message.kind == "broadcast":
            found.append(message)
    return found


def unsealers(hierarchy: Hierarchy, key_dir: str | None) -> dict[str, Unsealer | None]:
    """Each federation's unsealer (its aggregator's X25519 key), when the run seals deltas."""
    if hierarchy.run.sealing != "required":
        return dict.fromkeys(hierarchy.federations)
    if key_dir is None:
        raise ReplayError(
            f"run {hierarchy.run.id!r} seals its updates to the aggregators: give the key "
            "directory holding their private keys (--key-dir DIR)"
        )
    found: dict[str, Unsealer | None] = {}
    for fid in hierarchy.federations:
        ring = load_keyring(key_dir, fid)
        if ring.sealer is None:
            raise ReplayError(f"no sealing key for {fid!r} in {key_dir} ({fid}.xkey)")
        found[fid] = Unsealer(fid, ring.sealer)
    return found


@dataclass
class Recorded:
    """What a replay needs of a finished run."""

    rounds: list[RecordedRound]
    updates: dict[str, RecordedUpdate]
    broadcasts: dict[tuple[str, int], str]  # (federation, version) -> content hash
    clients: list[MetricsReport]
    unreadable: list[str]
    #: federation -> broadcast version -> the parent broadcast it took (from the manifests)
    takes: dict[str, dict[int, int]] = field(default_factory=dict)


async def recorded_run(kafka: str, hierarchy: Hierarchy, key_dir: str | None) -> Recorded:
    """Read a finished run: its aggregators' round ledgers, every update on its up topics
    (decoded; opened with the aggregators' keys when sealed), its broadcasts' content
    hashes and its clients' reports."""
    topics = Topics(hierarchy.run.id)
    settings = settings_for(kafka, hierarchy.run.id)
    opener = unsealers(hierarchy, key_dir)
    reports = await metrics(settings, topics)
    rounds = [
        RecordedRound(
            r.envelope.federation, r.round, r.ledger, int(r.values.get("members", 0)), r.values
        )
        for r in reports
        if r.role == "aggregator" and r.ledger is not None
    ]
    if not rounds:
        raise ReplayError(
            f"run {hierarchy.run.id!r} has no round ledgers on {kafka} (no run, or one "
            "recorded before aggregators published them)"
        )
    found: dict[str, RecordedUpdate] = {}
    unreadable: list[str] = []
    broadcasts: dict[tuple[str, int], str] = {}
    takes: dict[str, dict[int, int]] = {}
    for fid in hierarchy.federations:
        recorded, problems = await updates(settings, topics, fid, unsealer=opener[fid])
        unreadable += problems
        for u in recorded:
            m = u.manifest
            found.setdefault(
                m.update_id,
                RecordedUpdate(
                    fid,
                    m.update_id,
                    m.envelope.sender,
                    m.sample_count,
                    m.base_version,
                    m.round,
                    u.offset,
                    decompress(u.received.delta.tensors(), m.codecs),
                ),
            )
        for m in await broadcast_manifests(settings, topics, fid):
            broadcasts.setdefault((fid, m.version), m.content_hash)
            took = m.metrics.get("parent_version")
            if hierarchy.federations[fid].parent is not None and took is not None:
                takes.setdefault(fid, {}).setdefault(m.version, int(took))
    clients = [r for r in reports if r.role == "client"]
    return Recorded(rounds, found, broadcasts, clients, unreadable, takes)
