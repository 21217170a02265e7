"""Following a federation's broadcasts: start where Redis says the current model lies.

A newcomer asks Redis for the federation's model pointer (version, topic, partition, offset),
reads that partition from that offset (explicit assignment: no consumer group, no rebalance;
through the process's one shared reader of the partition, ``brokers/fanout.py``), and hands
back the newest complete broadcast. Other federations' records that share the partition are
skipped by key before they are decoded; a record of the federation that cannot be used is
handed to ``on_rejected`` (the participant dead-letters it). In a sealing run it opens
broadcasts sealed to its owner; in a signing run it refuses one signed with a revoked key.

Without sealing, the followers of one federation in one process share the decoding: each
broadcast is decoded, hash-checked and reassembled once (``brokers.deltas.SharedReceiver``),
and every follower gets views into the one verified payload; each still checks the signature
against its own keys and revocations, and refuses what it would refuse alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
import torch
from aiokafka import ConsumerRecord, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from brokers.deltas import DeltaReceiver, Outcome, Received, Unreadable
from brokers.fanout import Subscription, fanouts
from brokers.kafka import KafkaSettings, partition_for
from brokers.revocations import Revocations
from brokers.state import RedisState
from schemas.delta import Reassembler
from schemas.messages import DeltaManifest
from schemas.sealing import Unsealer
from schemas.signing import SignatureError, verify_manifest
from worldlm.core.stopping import Stopped

if TYPE_CHECKING:
    from worldlm.participants.node import Node

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Broadcast:
    """A federation's model at one version."""

    manifest: DeltaManifest
    tensors: dict[str, torch.Tensor]
    bytes: int

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def round(self) -> int:
        return self.manifest.round

    @property
    def final(self) -> bool:
        return bool(self.manifest.metrics.get("final", 0.0))


class BroadcastFollower:
    """Yields ever newer broadcasts of one federation."""

    def __init__(
        self,
        settings: KafkaSettings,
        state: RedisState,
        federation: str,
        *,
        topic: str,
        keys: Mapping[str, Ed25519PublicKey] | None = None,
        unsealer: Unsealer | None = None,
        on_rejected: Callable[[Unreadable], Awaitable[None]] | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.settings = settings
        self.on_rejected = on_rejected  # a record of the federation that could not be used
        self.state = state
        self.federation = federation
        self.topic = topic  # the federation's broadcast topic
        self.keys = keys  # verify each broadcast's signature with these (None: unsigned run)
        self.revocations = revocations  # the participant's reader of the revocation chain
        self._key = federation.encode()
        self._records: Subscription | None = None
        # Sealed broadcasts are opened with this participant's own key: no sharing then.
        self._own = DeltaReceiver(Reassembler(unsealer=unsealer)) if unsealer else None
        self.rejected: Counter[str] = Counter()

    async def start(self, stop: asyncio.Event | None = None) -> int:
        """Follow the federation's broadcasts from the current model (Redis's pointer), or
        from the partition's start when there is none yet: the first broadcast then wakes
        :meth:`next` itself, with no polling. Returns the pointer's version (-1: none)."""
        if stop is not None and stop.is_set():
            raise Stopped(f"stopped before following {self.federation}")
        pointer = await self.state.model_version(self.federation)
        if pointer is None:
            tp = TopicPartition(
                self.topic, partition_for(self.federation, self.settings.partitions)
            )
            offset, version = 0, -1
        else:
            tp = TopicPartition(pointer.topic, pointer.partition)
            offset, version = pointer.offset, pointer.version
        self._records = await fanouts.subscribe(self.settings, tp, offset)
        return version

    async def stop(self) -> None:
        records, self._records = self._records, None
        if records is not None:
            await records.close()

    async def next(self, after_version: int, timeout_s: float | None = None) -> Broadcast | None:
        """The newest broadcast with a version above ``after_version`` (None on timeout).

        Wakes when records arrive (the process's shared reader of the partition hands them
        over); a late joiner drains what the partition already holds and skips old versions.
        """
        assert self._records is not None, "start() first"
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        newest: Broadcast | None = None
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            records = await self._records.fetch(left, idle=newest is not None)
            for record in records:
                if record.key != self._key:
                    continue
                result = self._feed(record)
                if isinstance(result, Unreadable):
                    self.rejected[result.reason] += 1
                    if self.on_rejected is not None:
                        await self.on_rejected(result)  # dead-lettered by the participant
                if not isinstance(result, Received):  # a chunk, a refusal, a repeat
                    continue
                revoked = await self._revoked()
                b = self._broadcast(result, revoked)
                if (
                    b is not None
                    and b.version > after_version
                    and (newest is None or b.version > newest.version)
                ):
                    newest = b
            # Answer once nothing more is waiting: a late joiner skips old versions.
            if newest is not None and (self._records.caught_up or not records):
                return newest
            if deadline is not None and time.monotonic() >= deadline:
                return newest

    def _feed(self, record: ConsumerRecord) -> Outcome:
        if self._own is not None:
            return self._own.feed(record)
        assert self._records is not None
        return self._records.fanout.receiver(self._key).feed(record)

    async def _revoked(self) -> set[str]:
        """The revoked keys, in a signing run (one read per complete broadcast)."""
        return set(await self.revocations.revoked()) if self.revocations is not None else set()

    def _broadcast(self, received: Received, revoked: set[str]) -> Broadcast | None:
        m = received.delta.manifest
        if m.kind != "broadcast" or m.envelope.sender != self.federation:
            return None
        if self.keys is not None:
            try:
                verify_manifest(m, self.keys, received.delta.payload.data, revoked)
            except SignatureError as exc:
                self.rejected[exc.reason] += 1
                log.warning("broadcast_rejected", reason=exc.reason, detail=str(exc))
                return None
        return Broadcast(m, received.delta.tensors(), m.total_bytes)


def follow(node: Node, federation: str) -> BroadcastFollower:
    """``node``'s follower of ``federation``'s broadcasts: its keys, unsealer and revocation
    reader; a record of the federation that cannot be used is dead-lettered."""
    return BroadcastFollower(
        node.settings,
        node.state,
        federation,
        topic=node.topics.down(federation),
        keys=node.public_keys,
        unsealer=node.unsealer,
        on_rejected=lambda r: node.dead_letter(r.record, r.reason, r.detail),
        revocations=node.revocations,
    )
