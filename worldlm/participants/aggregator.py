"""The aggregator participant: the live I/O shell around a federation's round core.

Every decision (admission, quorum/deadline/buffer, close, the exchange with the parent) is
the :class:`~worldlm.participants.federation.FederationCore`'s; this shell reads the
federation's update partition, feeds the core, and publishes what it decides: dead letters,
residual-cache entries, round events, metrics, the upward submission and broadcasts.

The checkpoint (core snapshot plus the offsets it covers) is the single source of truth of a
round; Redis shows others what they need (membership, the model pointer, arrivals, the
residual cache). Delivery is at-least-once and nothing is counted twice: an admitted update
is checkpointed before its offset is, and a re-read update is a duplicate by id. While the
federation waits for its parent's broadcast it keeps reading its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Literal

from aiokafka import TopicPartition

from brokers.deltas import DeltaReceiver, Received, Rejected, publish_delta
from brokers.kafka import PartitionReader, partition_for
from schemas.delta import encode_delta, new_update_id
from schemas.messages import MembershipEvent, RoundEvent
from schemas.signing import verify_manifest
from worldlm.config import Hierarchy
from worldlm.participants.checkpoint import Checkpoint, flatten_state, unflatten_state
from worldlm.participants.federation import (
    Accepted,
    FederationCore,
    Offer,
    Pending,
    Snapshot,
)
from worldlm.participants.federation import Rejected as Refused
from worldlm.participants.follower import Broadcast, BroadcastFollower, FollowerStopped
from worldlm.participants.lease import Lease
from worldlm.participants.node import Endpoints, Node, bounded
from worldlm.training.workbench import initial_weights

#: How often membership, deadlines and expired partial updates are checked.
TICK_S = 0.5


class Stopped(Exception):
    """The participant was asked to stop (or lost its lead)."""


class AggregatorParticipant:
    """One federation's aggregator."""

    def __init__(
        self, hierarchy: Hierarchy, endpoints: Endpoints, federation: str, *, checkpoint_dir: Path
    ) -> None:
        self.core = FederationCore(
            hierarchy, federation, initial_weights(hierarchy.run), new_id=new_update_id
        )
        self.hierarchy, self.fed, self.id = hierarchy, self.core.fed, federation
        self.node = Node(hierarchy, endpoints, federation, "aggregator", self.fed.parent or "")
        self.checkpoint = Checkpoint(checkpoint_dir / hierarchy.run.id / federation)
        self.stop = asyncio.Event()
        self.lease = Lease(
            self.node.state,
            federation,
            ttl_s=self.node.heartbeat_ttl_s,
            log=self.node.log,
            on_lost=self.stop.set,
        )
        self.up_tp = TopicPartition(
            self.node.topics.up(self.fed.level),
            partition_for(federation, hierarchy.run.partitions),
        )
        self._key = federation.encode()
        self._receiver = DeltaReceiver()
        self._parent: BroadcastFollower | None = None
        self._parent_wait: asyncio.Task[Broadcast | None] | None = None
        self._bytes_in = 0
        self._lag = 0
        self._gaps = 0

    @property
    def token(self) -> str:
        return self.lease.token

    @property
    def lost_lead(self) -> bool:
        return self.lease.lost

    async def run(self) -> None:
        """Aggregate until the run's final broadcast, ``stop``, or a lost lead."""
        await self.node.start()
        try:
            if await self.lease.acquire(self.stop):
                await self._lead()
        finally:
            await bounded(self.node.log, "resign", self.lease.release())
            await self.node.stop()

    async def _lead(self) -> None:
        node, core = self.node, self.core
        self._restore()
        reader = PartitionReader(node.settings, {self.up_tp: core.meta.offsets.get(self._tp, 0)})
        await reader.start()
        try:
            if self.fed.parent is not None:
                self._parent = BroadcastFollower(
                    node.settings, node.state, self.fed.parent, keys=node.public_keys
                )
                await self._parent.start(self.stop)
            await node.join()
            if core.meta.final:
                return
            pointer = await node.state.model_version(self.id)
            if core.meta.awaiting_parent:
                await self._submit()
            elif pointer is None or pointer.version < core.meta.version:
                await self._broadcast()
            if core.open:
                await self._open_round()
            await self._loop(reader)
        except (Stopped, FollowerStopped):
            node.log.info("aggregator_stopping")
        finally:
            if self._parent_wait is not None:
                self._parent_wait.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._parent_wait
            await bounded(node.log, "reader", reader.stop())
            if self._parent is not None:
                await bounded(node.log, "parent_follower", self._parent.stop())
            if not self.lease.lost:  # else the membership is the new leader's
                await bounded(node.log, "leave", node.leave())
            node.log.info(
                "aggregator_stopped",
                round=core.meta.round,
                version=core.meta.version,
                read_gaps=reader.gaps,
                read_gaps_skipped=reader.gaps_skipped,
                **dict(core.counters),
                **dict(node.counters),
                **self._receiver.reassembler.counters.as_dict(),
            )

    async def _loop(self, reader: PartitionReader) -> None:
        """Intake, parent and close, until the final broadcast."""
        core, last_tick = self.core, 0.0
        while not core.meta.final:
            if self.stop.is_set():
                raise Stopped
            admitted = await self._intake(reader)
            if self._parent_wait is not None and self._parent_wait.done():
                broadcast, self._parent_wait = self._parent_wait.result(), None
                if broadcast is None:  # cannot happen without a timeout; wait again
                    await self._submit()
                    continue
                await self._take_parent(broadcast)
                continue
            now = time.monotonic()
            if not admitted and now - last_tick < TICK_S:
                continue
            if now - last_tick >= TICK_S:
                last_tick = now
                self._receiver.expire()
                await self._expire_members()
            if core.open and core.pending:
                live = len((await self.node.state.roster(self.id)).live)
                reason = core.close_reason(time.time(), live)
                if reason is not None:
                    await self._close(reason, live)

    @property
    def _tp(self) -> str:
        return f"{self.up_tp.topic}:{self.up_tp.partition}"

    # -- intake --------------------------------------------------------------------------

    async def _intake(self, reader: PartitionReader) -> bool:
        """Read what the partition has; True if an update was admitted."""
        admitted, next_offset = False, None
        for record in await reader.fetch(timeout_ms=100):
            if record.key == self._key:
                result = self._receiver.feed(record)
                if isinstance(result, Rejected):
                    await self.node.dead_letter(record, result.reason, result.detail)
                elif isinstance(result, Received):
                    admitted |= await self._offer(result)
            next_offset = record.offset + 1
        self._gaps = reader.gaps
        highwater = reader.highwater(self.up_tp)
        if next_offset is not None:
            self.core.meta.offsets[self._tp] = self._receiver.safe_offset(self.up_tp, next_offset)
        position = self.core.meta.offsets.get(self._tp, 0) if next_offset is None else next_offset
        if highwater is not None:
            self._lag = max(self._lag, highwater - position)
        return admitted

    async def _offer(self, received: Received) -> bool:
        node, delta = self.node, received.delta
        m = delta.manifest
        keys = node.public_keys

        def verify() -> None:
            assert keys is not None
            verify_manifest(m, keys, delta.payload.data)

        decision = self.core.offer(
            Offer(
                m.envelope.sender,
                m.update_id,
                delta.tensors(),
                m.sample_count,
                m.base_version,
                kind=m.kind,
                nbytes=m.total_bytes,
                verify=verify if keys is not None else None,
            )
        )
        source = _Source(received.topic, received.partition, received.first_offset)
        if isinstance(decision, Refused):
            await node.dead_letter(source, decision.reason, decision.detail, count=False)
            return False
        if not isinstance(decision, Accepted):
            return False  # a duplicate: already folded or pending
        # Durable first, then the offset that delivered it.
        self.checkpoint.save_pending(m.update_id, self.core.pending[-1].delta)
        self.core.meta.offsets[self._tp] = self._receiver.safe_offset(
            self.up_tp, received.last_offset + 1
        )
        self._save(model=False)
        self._bytes_in += m.total_bytes
        await node.state.record_staleness(self.id, decision.sender, decision.staleness)
        live = len((await node.state.roster(self.id)).live)
        # Arrivals are shown in Redis; the quorum is the core's (ours), not the script's.
        await node.state.arrive(
            self.id, self.core.meta.round, decision.sender, quorum=self.core.quorum(live)
        )
        node.log.info(
            "update_accepted",
            sender=decision.sender,
            staleness=decision.staleness,
            round=self.core.meta.round,
        )
        return True

    async def _expire_members(self) -> None:
        for member in await self.node.state.purge_expired(self.id):
            self.node.counters["members_expired"] += 1
            self.node.log.warning("member_expired", member=member)
            await self.node.event(
                MembershipEvent(
                    envelope=self.node.envelope(self.id), member=member, action="expired"
                )
            )

    # -- rounds --------------------------------------------------------------------------

    async def _open_round(self) -> None:
        self.core.open_round(time.time())
        for p in self.core.pending:  # arrivals after a restart are shown again (idempotent)
            await self.node.state.arrive(self.id, self.core.meta.round, p.sender, quorum=1 << 30)
        await self._event("opened", self.core.meta.round)

    async def _close(self, reason: str, live: int) -> None:
        node, core = self.node, self.core
        started = time.perf_counter()
        residuals = {}
        for other in self.hierarchy.residual_links(self.id) if core.key else ():
            cached = await node.state.get_residual(other)
            if cached is not None:
                residuals[other] = (cached.round, cached.tensors)
        closed = await asyncio.to_thread(core.close, reason, core.residual_entries(residuals), live)
        for rejection in closed.rejected:
            node.log.warning("update_declined", sender=rejection.sender, reason=rejection.reason)
        if closed.residual is not None:
            await node.state.put_residual(self.id, core.meta.round, closed.residual)
        self._save()
        self.checkpoint.drop_pending(keep=set())
        await node.state.close_round(self.id, closed.round, reason, self.id)
        await self._event("closed", closed.round, reason, len(closed.folded))
        values = closed.values | {
            "bytes_in": float(self._bytes_in),
            "bytes_out": float(node.producer.bytes_sent),
            "aggregate_s": time.perf_counter() - started,
            # the most records intake was behind the partition's end during the round
            "lag": float(self._lag),
            # undecodable records (ours) and refused updates (the core's)
            "rejected": float(core.counters["rejected"] + node.counters["rejected"]),
            "read_gaps": float(self._gaps),
        }
        await node.metrics(closed.round, values, federation=self.id)
        self._lag = 0
        node.log.info(
            "round_closed",
            round=closed.round,
            reason=reason,
            updates=len(closed.folded),
            version=closed.version,
        )
        if closed.exchange:
            await self._submit()
        else:
            await self._broadcast()
            if not closed.final:
                await self._open_round()

    async def _submit(self) -> None:
        """Send the backbone to the parent; its broadcast is awaited alongside intake."""
        assert self._parent is not None and self.fed.parent is not None
        node, core = self.node, self.core
        submission = core.submission()
        self._save(model=False)  # the submission id survives a restart
        encoded = encode_delta(
            submission.delta,
            envelope=node.envelope(self.fed.parent),
            kind="update",
            base_version=submission.base_version,
            sample_count=submission.samples,
            round=submission.round,
            update_id=submission.update_id,
            chunk_size=self.hierarchy.run.chunk_kib * 1024,
            signer=node.signer,
        )
        published = await publish_delta(
            node.producer, node.topics.up(self.fed.level - 1), self.fed.parent, encoded
        )
        node.log.info(
            "submitted_to_parent",
            parent=self.fed.parent,
            base=submission.base_version,
            bytes=published.bytes,
            tensors=len(submission.delta),
        )
        self._parent_wait = asyncio.create_task(
            self._parent.next(core.meta.parent_version), name=f"parent-{self.id}"
        )

    async def _take_parent(self, broadcast: Broadcast) -> None:
        self.core.take_parent(broadcast.tensors, broadcast.version, broadcast.final)
        self._save()
        self.node.log.info("took_parent", parent_version=broadcast.version, final=broadcast.final)
        await self._broadcast()
        if not self.core.meta.final:
            await self._open_round()

    async def _broadcast(self) -> None:
        """Publish the federation's model (the full weights: a model, not a delta)."""
        node, meta = self.node, self.core.meta
        if not await self.lease.fence():  # a replica that lost the lead must not publish
            raise Stopped
        encoded = encode_delta(
            self.core.weights,
            envelope=node.envelope(self.id),
            kind="broadcast",
            base_version=meta.version,
            version=meta.version,
            round=meta.round,
            metrics={"final": float(meta.final), "parent_version": float(meta.parent_version)},
            chunk_size=self.hierarchy.run.chunk_kib * 1024,
            signer=node.signer,
        )
        published = await publish_delta(
            node.producer, node.topics.down(self.fed.level), self.id, encoded
        )
        await node.state.set_model_version(
            self.id,
            meta.version,
            topic=published.topic,
            partition=published.partition,
            offset=published.first_offset,
        )
        node.log.info(
            "broadcast",
            version=meta.version,
            round=meta.round,
            final=meta.final,
            bytes=published.bytes,
        )

    async def _event(
        self, action: Literal["opened", "closed"], round: int, reason: str = "", arrived: int = 0
    ) -> None:
        await self.node.event(
            RoundEvent(
                envelope=self.node.envelope(self.id),
                round=round,
                action=action,
                reason=reason,
                arrived=arrived,
                quorum=arrived,
                version=self.core.meta.version,
            )
        )

    # -- checkpoints ---------------------------------------------------------------------

    def _restore(self) -> None:
        if not self.checkpoint.exists:
            self._save()
            return
        meta, weights, base, strategy_tensors = self.checkpoint.load()
        pending = [
            Pending(
                p["id"], p["sender"], p["samples"], p["base"], self.checkpoint.load_pending(p["id"])
            )
            for p in meta.pending
        ]
        strategy = unflatten_state(meta.strategy, strategy_tensors) if meta.strategy else {}
        self.core.restore(Snapshot(meta, weights, base, strategy, pending))
        self.node.log.info(
            "aggregator_resumed",
            round=meta.round,
            version=meta.version,
            pending=len(pending),
            offset=meta.offsets.get(self._tp, 0),
        )

    def _save(self, model: bool = True) -> None:
        if self.lease.lost:  # the checkpoint is the new leader's now
            raise Stopped
        snapshot = self.core.snapshot()
        if model:
            data, tensors = flatten_state(snapshot.strategy)
            snapshot.meta.strategy = data
            self.checkpoint.save_model(snapshot.weights, snapshot.base, tensors)
        self.checkpoint.save_meta(snapshot.meta)


class _Source:
    """Where a reassembled update came from, to dead-letter it (payload not kept)."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.value: bytes | None = None
