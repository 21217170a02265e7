"""What every participant shares: where the run lives, a producer, Redis, and how to speak.

A :class:`Node` publishes events, metrics and dead letters on the run-wide topics, keeps a
heartbeat in its federation's membership, and counts what it did. Participants compose it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import structlog
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from brokers.admin import ensure_topics
from brokers.deltas import Published, publish_delta
from brokers.health import REQUEST_TIMEOUT_MS, BrokerHealth
from brokers.kafka import KafkaSettings, Producer
from brokers.revocations import Revocations
from brokers.state import RedisState
from schemas.codec import encode
from schemas.delta import encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import (
    DeadLetter,
    Envelope,
    MembershipEvent,
    MetricsReport,
    RoundEvent,
    RoundLedger,
)
from schemas.sealing import Unsealer
from schemas.topics import Topics
from worldlm.security.acl import principal
from worldlm.config.hierarchy import Hierarchy
from worldlm.security.credentials import apply_redis_users, load_password, with_credentials
from worldlm.security.keys import KeyFileError
from worldlm.participants.heartbeats import Beat, heartbeats
from worldlm.security.keychain import Keychain

Role = Literal["client", "aggregator"]

#: How long one step of shutting down may take before it is skipped.
SHUTDOWN_STEP_S = 10.0
#: A dead letter keeps at most this much of the rejected record.
DEAD_LETTER_PAYLOAD = 64 * 1024


class Origin(Protocol):
    """Where a rejected input came from (a Kafka record, or a reassembled update's first)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(frozen=True)
class Endpoints:
    """Where a participant finds Kafka and Redis, and its key directory when the run signs
    deltas or isolates federations (``worldlm keys generate``)."""

    kafka: str
    redis: str
    key_dir: str | None = None


async def prepare_run(hierarchy: Hierarchy, endpoints: Endpoints) -> None:
    """Create the run's topics (idempotent): every federation's up/down and the run-wide ones.

    A run with ``isolation = "acl"`` also gets its Redis users, set through ``endpoints``'
    Redis connection, which must be an admin's (the operator's, or the one-process runner's).
    """
    topics = Topics(hierarchy.run.id)
    settings = KafkaSettings(bootstrap=endpoints.kafka, partitions=hierarchy.run.partitions)
    await ensure_topics(
        settings,
        [*topics.data_plane(hierarchy.federations), *topics.run_wide()],
        retention_ms=hierarchy.run.retention_ms,
    )
    if hierarchy.run.isolation == "acl":
        await apply_redis_users(hierarchy, endpoints.redis, endpoints.key_dir)


async def bounded(
    log: Any, step: str, awaitable: Awaitable[object], timeout_s: float = SHUTDOWN_STEP_S
) -> None:
    """One step of shutting down; a step that fails or hangs is logged and skipped, because
    stopping must finish (a participant that dies is expired by its heartbeat anyway)."""
    try:
        async with asyncio.timeout(timeout_s):
            await awaitable
    except TimeoutError:
        log.warning("shutdown_step_timed_out", step=step, timeout_s=timeout_s)
    except Exception as exc:
        log.warning("shutdown_step_failed", step=step, error=repr(exc))


class Node:
    """One participant's connection to the run."""

    def __init__(
        self,
        hierarchy: Hierarchy,
        endpoints: Endpoints,
        node_id: str,
        role: Role,
        federation: str,
        *,
        sends_deltas: bool = True,
    ) -> None:
        self.hierarchy = hierarchy
        self.run = hierarchy.run
        self.id = node_id
        self.role: Role = role
        self.federation = federation  # the federation this node is a member of ("" for root)
        self.keys: Keychain | None = None
        modes = {"signed": self.run.signing, "sealed": self.run.sealing}
        needs = [what for what, mode in modes.items() if mode == "required"]
        if needs and sends_deltas:
            if endpoints.key_dir is None:
                raise KeyFileError(
                    f"run {self.run.id!r} requires {' and '.join(needs)} deltas: give "
                    f"{node_id} its key directory (--keys DIR; worldlm keys generate)"
                )
            self.keys = Keychain(self.run, endpoints.key_dir, node_id, self.recipients())
        redis = endpoints.redis
        if self.run.isolation == "acl" and sends_deltas:  # a participant logs in as itself
            password = load_password(endpoints.key_dir, node_id)
            redis = with_credentials(redis, principal(self.run.id, node_id), password)
        self.topics = Topics(self.run.id)
        self.keyspace = Keyspace(self.run.id)
        self.settings = KafkaSettings(
            bootstrap=endpoints.kafka,
            client_id=f"worldlm-{node_id}",
            partitions=self.run.partitions,
            max_request_size=self.run.chunk_kib * 1024 + 64 * 1024,
            request_timeout_ms=REQUEST_TIMEOUT_MS,  # a send waits as long as the watch does
        )
        # The process's producer, Redis pool and broker watch, shared by its participants.
        self.producer = Producer(self.settings, shared=True)
        self.broker = BrokerHealth(self.settings)  # the broker gone for good ends the run
        self.state = RedisState(redis, self.keyspace, shared=True)
        self.counters: Counter[str] = Counter()
        # member_of: the federation this node is a member of (its parent for an aggregator,
        # "" for the root); an aggregator's own federation is its node id.
        self.log = structlog.get_logger("worldlm.node").bind(
            node=node_id, role=role, member_of=federation
        )
        self._heartbeat: Beat | None = None
        admin = self.keys.admin if self.keys is not None else None  # None: revokes nothing
        self.revocations = Revocations(self.state, admin, counters=self.counters, log=self.log)

    @property
    def signer(self) -> Ed25519PrivateKey | None:
        """The key this node signs its deltas with (None when the run does not sign)."""
        return self.keys.signer if self.keys is not None else None

    @property
    def public_keys(self) -> dict[str, Ed25519PublicKey] | None:
        """Keys to verify others' deltas with (None when the run does not sign)."""
        return self.keys.public if self.keys is not None else None

    @property
    def unsealer(self) -> Unsealer | None:
        """Opens deltas sealed to this node (None when the run does not seal)."""
        return self.keys.unsealer if self.keys is not None else None

    def recipients(self) -> tuple[str, ...]:
        """Whom this node seals to: its federation's aggregator (updates) and, for an
        aggregator, its own federation's members (broadcasts) and the federations that read
        its residual-cache entries (and itself)."""
        own = self.hierarchy.federations.get(self.id) if self.role == "aggregator" else None
        readers = (self.id, *self.hierarchy.residual_readers(self.id)) if own else ()
        return (
            *([self.federation] if self.federation else []),
            *(own.members if own else ()),
            *readers,
        )

    def seal_to(self, *recipients: str) -> dict[str, X25519PublicKey] | None:
        """Sealing keys of ``recipients`` (None when the run does not seal); a rotated key
        directory is re-read first."""
        if self.keys is None:
            return None
        self.keys.reload()
        return self.keys.seal_to(recipients)

    def envelope(self, federation: str | None = None) -> Envelope:
        return Envelope(run=self.run.id, sender=self.id, federation=federation or self.federation)

    async def start(self) -> None:
        await self.producer.start()
        await self.state.start()
        await self.broker.start()

    async def stop(self) -> None:
        await bounded(self.log, "heartbeat", self.stop_heartbeat())
        if self.broker.gone:  # what is still to send never will be: stopping needn't wait
            await bounded(self.log, "abandon", self.producer.abandon(self.broker.error()))
        await bounded(self.log, "producer", self.producer.stop())
        await bounded(self.log, "kafka_health", self.broker.stop())
        await bounded(self.log, "redis", self.state.stop())

    # -- membership ----------------------------------------------------------------------

    @property
    def heartbeat_ttl_s(self) -> float:
        return self.run.heartbeat_s * 3

    async def join(self) -> None:
        """Heartbeat into the federation and keep doing so in the background (with the
        process's other members: ``heartbeats.py``)."""
        if not self.federation:
            return
        if await self.state.heartbeat(
            self.federation, self.id, ttl_s=self.heartbeat_ttl_s, role=self.role
        ):
            await self.event(
                MembershipEvent(
                    envelope=self.envelope(), member=self.id, action="joined", role=self.role
                )
            )
        self._heartbeat = Beat(
            self.state,
            self.federation,
            self.id,
            self.heartbeat_ttl_s,
            self.role,
            lambda: self.log.warning("member_rejoined"),  # we had expired: a long stall
        )
        heartbeats.add(self._heartbeat, self.run.heartbeat_s)

    async def stop_heartbeat(self) -> None:
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None:
            await heartbeats.remove(beat, self.run.heartbeat_s)

    async def leave(self) -> None:
        """Leave cleanly: stop heartbeating, remove membership, say so."""
        await self.stop_heartbeat()
        if self.federation:
            await self.state.leave(self.federation, self.id)
        if self.federation and not self.broker.gone:  # else nobody would read it
            await self.event(
                MembershipEvent(
                    envelope=self.envelope(), member=self.id, action="left", role=self.role
                )
            )

    # -- deltas and models ---------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        *,
        to: Sequence[str],
        **manifest: Any,
    ) -> Published:
        """Chunk, seal to ``to`` and sign (in a run that does) and publish ``tensors`` keyed
        by ``key``."""
        seal_to = self.seal_to(*to)
        encoded = encode_delta(
            tensors,
            envelope=self.envelope(manifest.pop("federation", None)),
            chunk_size=self.run.chunk_kib * 1024,
            signer=self.signer,
            seal_to=seal_to,
            **manifest,
        )
        return await publish_delta(self.producer, topic, key, encoded)

    async def expire_members(self, federation: str) -> None:
        """Report members of ``federation`` whose heartbeat expired (each once)."""
        for member in await self.state.purge_expired(federation):
            self.counters["members_expired"] += 1
            self.log.warning("member_expired", member=member)
            await self.event(
                MembershipEvent(envelope=self.envelope(federation), member=member, action="expired")
            )

    # -- run-wide topics -----------------------------------------------------------------

    async def event(self, message: MembershipEvent | RoundEvent) -> None:
        await self.producer.send(
            self.topics.events, encode(message), key=message.envelope.federation
        )

    async def metrics(
        self,
        round: int,
        values: dict[str, float],
        federation: str | None = None,
        ledger: RoundLedger | None = None,
    ) -> None:
        report = self.report(round, values, federation, ledger)
        await self.producer.send(self.topics.metrics, encode(report), key=self.id)

    def report(
        self,
        round: int,
        values: dict[str, float],
        federation: str | None = None,
        ledger: RoundLedger | None = None,
    ) -> MetricsReport:
        """This participant's metrics report of ``round`` (keyed by its id when sent)."""
        envelope, role = self.envelope(federation), self.role
        return MetricsReport(envelope, round, self.id, role, values, ledger=ledger)

    async def dead_letter(
        self, record: Origin, reason: str, detail: str, *, count: bool = True
    ) -> None:
        """Keep a rejected record with its reason, count it (``unreadable``: it reached no
        decision), log it; never raise. ``count=False`` when the decision's owner (the
        federation core, whose ``rejected`` counts it) counted it already.
        """
        if count:
            self.counters[f"unreadable_{reason}"] += 1
            self.counters["unreadable"] += 1
        self.log.warning(
            "input_rejected",
            reason=reason,
            detail=detail[:500],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        value: bytes = record.value or b""
        letter = DeadLetter(
            envelope=self.envelope(),
            reason=reason,
            detail=detail[:2000],
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
            payload=value[:DEAD_LETTER_PAYLOAD],
        )
        try:
            await self.producer.send(self.topics.dead_letter, encode(letter), key=self.id)
        except Exception as exc:  # the dead-letter topic must never take a participant down
            self.log.error("dead_letter_failed", error=repr(exc))
