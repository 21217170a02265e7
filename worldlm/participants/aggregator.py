"""The aggregator participant: every inner node of the tree, recursively.

It consumes its children's updates from its level's update topic (its own partition, from the
offset its checkpoint recorded), validates and deduplicates them, records arrivals in the
Redis barrier, and closes a round at a quorum of live members or at the deadline (``sync``)
or when ``buffer`` updates are in (``async``, staleness-weighted). It aggregates with its
federation's strategy (backbone and key layers, residuals of linked federations, DP), writes
its key layers to the residual cache, and broadcasts. Every ``internal_rounds`` rounds it
submits its own update to its parent and, on the parent's next broadcast, takes the backbone
and keeps its key layers. The root has no parent and ends the run after ``run.rounds``.

Delivery is at-least-once and nothing is counted twice: an accepted update is saved to the
checkpoint before its offset is recorded, and a re-read update is dropped by its id.
Rejected input goes to the dead-letter topic with the reason; the round goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from aiokafka import TopicPartition

from brokers.deltas import DeltaReceiver, Received, Rejected, publish_delta
from brokers.kafka import PartitionReader, partition_for
from schemas.delta import encode_delta, new_update_id
from schemas.messages import RoundEvent
from schemas.signing import SignatureError, verify_manifest
from worldlm.config import Hierarchy
from worldlm.participants.checkpoint import Checkpoint, Meta, flatten_state, unflatten_state
from worldlm.participants.follower import BroadcastFollower
from worldlm.participants.node import Endpoints, Node, bounded
from worldlm.strategies import ResidualEntry, RoundContext, Update, make_strategy
from worldlm.training.workbench import Weights, initial_weights, key_names

#: How many folded update ids a checkpoint remembers for deduplication.
SEEN_MEMORY = 10_000


class Stopped(Exception):
    """The participant was asked to stop."""


@dataclass
class Pending:
    update_id: str
    sender: str
    samples: int
    base_version: int
    delta: dict[str, torch.Tensor]


def take_parent(
    weights: Weights, parent: Weights, key: frozenset[str], keep_key: bool
) -> dict[str, torch.Tensor]:
    """The model after a parent broadcast: the parent's backbone, our own key layers.

    With ``keep_key`` false (hierarchical FedAvg: no K) everything comes from the parent.
    """
    return {
        name: (value if keep_key and name in key else parent[name].clone())
        for name, value in weights.items()
    }


def check_update(
    sender: str, delta: dict[str, torch.Tensor], model: Weights
) -> tuple[str, str] | None:
    """(reason, detail) if an update cannot be folded into ``model``, else None."""
    unknown = sorted(set(delta) - set(model))
    if unknown:
        return "unknown_tensor", f"{sender}: tensors not in the model: {unknown[:5]}"
    for name, tensor in delta.items():
        if tensor.shape != model[name].shape:
            return (
                "bad_shape",
                f"{sender}: {name} has shape {tuple(tensor.shape)}, "
                f"model {tuple(model[name].shape)}",
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return "non_finite", f"{sender}: {name} holds NaN or Inf"
    return None


class AggregatorParticipant:
    """One federation's aggregator."""

    def __init__(
        self, hierarchy: Hierarchy, endpoints: Endpoints, federation: str, *, checkpoint_dir: Path
    ) -> None:
        if federation not in hierarchy.federations:
            raise KeyError(
                f"unknown federation {federation!r}; known: {sorted(hierarchy.federations)}"
            )
        self.hierarchy = hierarchy
        self.fed = hierarchy.federations[federation]
        self.id = federation
        self.level = self.fed.level
        self.policy = self.fed.policy
        self.run_config = hierarchy.run
        self.node = Node(hierarchy, endpoints, federation, "aggregator", self.fed.parent or "")
        self.checkpoint = Checkpoint(checkpoint_dir / hierarchy.run.id / federation)
        uses_key = self.policy.key != "fedavg"
        self.key = key_names(hierarchy.run, self.policy) if uses_key else frozenset()
        self.keep_key = uses_key
        self.strategy = make_strategy(
            self.policy.strategy_policy(seed=hierarchy.run.seed),
            set(self.key) if uses_key else None,
        )
        self.stop = asyncio.Event()
        self.meta = Meta()
        self.weights: Weights = {}
        self.base: Weights = {}  # the model as of the last parent broadcast we took
        self.pending: list[Pending] = []
        self._seen: set[str] = set()
        self._closed: str | None = None
        self._bytes_in = 0
        self._lag = 0  # records on our partition not yet read, as of the last fetch
        self._next_offset = 0
        self.up_tp = TopicPartition(
            self.node.topics.up(self.level), partition_for(federation, self.run_config.partitions)
        )
        self._key = federation.encode()
        self._receiver = DeltaReceiver()
        self._parent: BroadcastFollower | None = None
        self._reader: PartitionReader | None = None
        #: This replica's claim on the federation's lead (see :meth:`run`).
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost_lead = False
        self._lease: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Aggregate until the run's final broadcast (or until ``stop`` is set).

        Replicas of one federation's aggregator may run side by side (with a shared
        checkpoint directory): one leads, holding a lease in Redis that it renews; the
        others stand by and the first to take the lease after the leader dies resumes from
        its checkpoint.
        """
        node = self.node
        await node.start()
        try:
            if await self._await_lead():
                await self._lead()
        finally:
            await self._resign()
            await node.stop()

    async def _await_lead(self) -> bool:
        """Take the federation's lead, standing by while another replica has it."""
        node, ttl = self.node, self.node.heartbeat_ttl_s
        standing_by = False
        while not self.stop.is_set():
            if await node.state.lead(self.id, self.token, ttl_s=ttl):
                if standing_by:
                    node.log.warning("took_over_lead", token=self.token)
                self._lease = asyncio.create_task(self._keep_lead(ttl), name=f"lead-{self.id}")
                return True
            if not standing_by:
                standing_by = True
                node.log.info("standing_by", leader=await node.state.leader(self.id))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=ttl / 3)
        return False

    async def _keep_lead(self, ttl: float) -> None:
        """Renew the lease; losing it (a stall longer than its TTL) stops this replica."""
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                held = await self.node.state.lead(self.id, self.token, ttl_s=ttl)
            except Exception as exc:  # Redis unreachable: retry; the lease may yet expire
                self.node.log.warning("lead_renewal_failed", error=repr(exc))
                continue
            if not held:
                self._lost_lead()
                return

    def _lost_lead(self) -> None:
        self.lost_lead = True
        self.node.log.error("lead_lost", token=self.token)
        self.stop.set()

    async def _resign(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease
        if not self.lost_lead:
            await bounded(self.node.log, "resign", self.node.state.resign(self.id, self.token))

    async def _lead(self) -> None:
        node = self.node
        self._restore()
        reader = PartitionReader(
            node.settings, {self.up_tp: self.meta.offsets.get(self._tp_key, 0)}
        )
        await reader.start()
        self._reader = reader
        try:
            if self.fed.parent is not None:
                self._parent = BroadcastFollower(
                    node.settings, node.state, self.fed.parent, keys=node.public_keys
                )
                await self._parent.start(self.stop)
            await node.join()
            if self.meta.final:
                return
            if self.meta.pending and self.meta.round_opened == 0:
                self.meta.round_opened = time.time()
            pointer = await node.state.model_version(self.id)
            if self.meta.awaiting_parent:
                await self._exchange_with_parent()
            if pointer is None or pointer.version < self.meta.version:
                await self._broadcast(final=self.meta.final)
            while not self.meta.final:
                await self._open_round()
                reason = await self._collect(reader)
                await self._close(reason)
        except Stopped:
            node.log.info("aggregator_stopping")
        finally:
            await bounded(node.log, "reader", reader.stop())
            if self._parent is not None:
                await bounded(node.log, "parent_follower", self._parent.stop())
            if not self.lost_lead:  # else the membership is the new leader's
                await bounded(node.log, "leave", node.leave())
            node.log.info(
                "aggregator_stopped",
                round=self.meta.round,
                version=self.meta.version,
                read_gaps=reader.gaps,
                read_gaps_skipped=reader.gaps_skipped,
                **dict(node.counters),
                **self._receiver.reassembler.counters.as_dict(),
            )

    @property
    def _tp_key(self) -> str:
        return f"{self.up_tp.topic}:{self.up_tp.partition}"

    def _restore(self) -> None:
        if not self.checkpoint.exists:
            self.weights = initial_weights(self.run_config)
            self.base = {n: t.clone() for n, t in self.weights.items()}
            self._save()
            return
        meta, weights, base, strategy_tensors = self.checkpoint.load()
        self.meta, self.weights, self.base = meta, weights, base
        if meta.strategy is not None:
            self.strategy.load_state_dict(unflatten_state(meta.strategy, strategy_tensors))
        self.pending = [
            Pending(
                p["id"], p["sender"], p["samples"], p["base"], self.checkpoint.load_pending(p["id"])
            )
            for p in meta.pending
        ]
        self._seen = set(meta.seen) | {p.update_id for p in self.pending}
        self.node.counters.update(meta.counters)
        self.node.log.info(
            "aggregator_resumed",
            round=meta.round,
            version=meta.version,
            pending=len(self.pending),
            offset=meta.offsets.get(self._tp_key, 0),
        )

    def _save(self, model: bool = True) -> None:
        if self.lost_lead:  # the checkpoint is the new leader's now
            raise Stopped
        self.meta.pending = [
            {"id": p.update_id, "sender": p.sender, "samples": p.samples, "base": p.base_version}
            for p in self.pending
        ]
        self.meta.counters = dict(self.node.counters)
        if model:
            data, tensors = flatten_state(self.strategy.state_dict())
            self.meta.strategy = data
            self.checkpoint.save_model(self.weights, self.base, tensors)
        self.checkpoint.save_meta(self.meta)

    # -- rounds --------------------------------------------------------------------------

    async def _open_round(self) -> None:
        self._closed = None
        if not self.pending:
            self.meta.round_opened = time.time()
        await self.node.event(
            RoundEvent(
                envelope=self.node.envelope(self.id),
                round=self.meta.round,
                action="opened",
                version=self.meta.version,
            )
        )
        if self.policy.schedule.mode == "sync" and self.pending:
            status = await self.node.state.barrier(self.id, self.meta.round)
            if status.closed:  # closed before a restart: aggregate what we had accepted
                self._closed = status.reason or "quorum"
            # A kill between checkpointing an update and recording its arrival loses the
            # arrival, not the update: record it again (arriving twice counts once).
            for sender in sorted({p.sender for p in self.pending} - status.members):
                if self._closed is None:
                    await self._arrive(sender)

    async def _collect(self, reader: PartitionReader) -> str:
        schedule = self.policy.schedule
        last_check = 0.0
        while self._closed is None:
            if self.stop.is_set():
                raise Stopped
            records = await reader.fetch(timeout_ms=100)
            for record in records:
                if record.key == self._key:
                    result = self._receiver.feed(record)
                    if isinstance(result, Rejected):
                        await self.node.dead_letter(record, result.reason, result.detail)
                    elif isinstance(result, Received):
                        await self._accept(result)
                self._next_offset = record.offset + 1
            if records:
                self.meta.offsets[self._tp_key] = self._receiver.safe_offset(
                    self.up_tp, self._next_offset
                )
            now = time.monotonic()
            if self._closed is None and now - last_check >= 0.5:
                last_check = now
                self._receiver.expire()
                await self._check_membership()
                if schedule.mode == "async" and len(self.pending) >= schedule.buffer:
                    self._closed = "buffer"
                elif schedule.mode == "sync" and self.pending:
                    await self._check_quorum()
                if records:
                    self._save(model=False)
        return self._closed

    async def _check_membership(self) -> None:
        for member in await self.node.state.purge_expired(self.id):
            from schemas.messages import MembershipEvent

            self.node.counters["members_expired"] += 1
            self.node.log.warning("member_expired", member=member)
            await self.node.event(
                MembershipEvent(
                    envelope=self.node.envelope(self.id), member=member, action="expired"
                )
            )

    async def _check_quorum(self) -> None:
        schedule = self.policy.schedule
        live = len((await self.node.state.roster(self.id)).live)
        quorum = max(schedule.min_quorum, math.ceil(live * schedule.quorum - 1e-9))
        arrived = len({p.sender for p in self.pending})
        if arrived >= quorum:
            reason = "quorum"
        elif time.time() - self.meta.round_opened > schedule.deadline_s:
            reason = "deadline"
        else:
            return
        if await self.node.state.close_round(self.id, self.meta.round, reason, self.id):
            self._closed = reason
        else:
            self._closed = (await self.node.state.barrier(self.id, self.meta.round)).reason

    async def _accept(self, received: Received) -> None:
        node, manifest = self.node, received.delta.manifest
        sender = manifest.envelope.sender
        record = _Record(received.topic, received.partition, received.first_offset)
        if manifest.update_id in self._seen:
            node.counters["updates_duplicate"] += 1
            return
        if manifest.kind != "update":
            return await node.dead_letter(
                record, "wrong_kind", f"{sender}: a {manifest.kind} on an update topic"
            )
        if sender not in self.fed.members:
            return await node.dead_letter(
                record, "unknown_sender", f"{sender} is not a member of {self.id}"
            )
        if node.public_keys is not None:
            try:
                verify_manifest(manifest, node.public_keys, received.delta.payload.data)
            except SignatureError as exc:
                return await node.dead_letter(record, exc.reason, str(exc))
        if manifest.sample_count <= 0:  # weight 0: alone in a round it would average nothing
            return await node.dead_letter(
                record, "no_samples", f"{sender}: sample count {manifest.sample_count}"
            )
        delta = received.delta.tensors()
        problem = check_update(sender, delta, self.weights)
        if problem is not None:
            return await node.dead_letter(record, *problem)
        staleness = self.meta.version - manifest.base_version
        if staleness < 0:
            return await node.dead_letter(
                record,
                "future_version",
                f"{sender}: base {manifest.base_version} > {self.meta.version}",
            )
        if staleness > self.policy.schedule.staleness_bound:
            return await node.dead_letter(
                record,
                "stale",
                f"{sender}: staleness {staleness} > bound {self.policy.schedule.staleness_bound}",
            )
        # One update per member per round: a newer one from the same member replaces it.
        self.pending = [p for p in self.pending if p.sender != sender]
        self.checkpoint.save_pending(manifest.update_id, delta)
        self.pending.append(
            Pending(manifest.update_id, sender, manifest.sample_count, manifest.base_version, delta)
        )
        self._seen.add(manifest.update_id)
        self._bytes_in += manifest.total_bytes
        node.counters["updates_accepted"] += 1
        # Durable first, then the offset that delivered it.
        self.meta.offsets[self._tp_key] = self._receiver.safe_offset(
            self.up_tp, received.last_offset + 1
        )
        self._save(model=False)
        await node.state.record_staleness(self.id, sender, staleness)
        if self.policy.schedule.mode == "sync":
            await self._arrive(sender)
        node.log.info("update_accepted", sender=sender, staleness=staleness, round=self.meta.round)

    async def _arrive(self, sender: str) -> None:
        """Record ``sender`` at this round's barrier; the round closes if that makes quorum."""
        arrival = await self.node.state.arrive(
            self.id,
            self.meta.round,
            sender,
            fraction=self.policy.schedule.quorum,
            min_quorum=self.policy.schedule.min_quorum,
        )
        if arrival.closed_now or arrival.closed:
            self._closed = "quorum"

    async def _residuals(self) -> list[ResidualEntry]:
        if not self.key:
            return []
        entries = []
        for other in self.hierarchy.residual_links(self.id):
            cached = await self.node.state.get_residual(other)
            if cached is None:
                continue
            weights = {n: t for n, t in cached.tensors.items() if n in self.key}
            entries.append(
                ResidualEntry(other, weights, rounds_stale=max(0, self.meta.round - cached.round))
            )
        return entries

    async def _close(self, reason: str) -> None:
        node, meta = self.node, self.meta
        started = time.perf_counter()
        # Sorted by sender: the sum's order, and so the result, does not depend on arrival order.
        updates = [
            Update(p.sender, p.delta, p.samples, staleness=meta.version - p.base_version)
            for p in sorted(self.pending, key=lambda p: p.sender)
        ]
        residuals = await self._residuals()
        live = len((await node.state.roster(self.id)).live)
        context = RoundContext(
            residuals, sample_rate=min(1.0, len(updates) / max(live, 1)), round=meta.round
        )
        result = await asyncio.to_thread(self.strategy.aggregate, self.weights, updates, context)
        for rejection in result.rejected:
            node.counters[f"rejected_{rejection.reason.split(':')[0].replace(' ', '_')}"] += 1
        self.weights = result.weights
        stale = [u.staleness for u in updates]
        samples = sum(p.samples for p in self.pending)
        meta.version += 1
        meta.round += 1
        meta.rounds_since_submit += 1
        meta.seen = (meta.seen + [p.update_id for p in self.pending])[-SEEN_MEMORY:]
        self._seen = set(meta.seen)
        self.pending = []
        node.counters["rounds_closed"] += 1
        meta.samples = meta.samples + samples
        if self.key:
            await node.state.put_residual(
                self.id, meta.round, {n: self.weights[n] for n in self.key}
            )
        root_done = self.fed.parent is None and meta.round >= self.run_config.rounds
        exchange = (
            self.fed.parent is not None and meta.rounds_since_submit >= self.policy.internal_rounds
        )
        meta.awaiting_parent = exchange
        meta.final = root_done
        self._save()
        self.checkpoint.drop_pending(keep=set())
        await node.event(
            RoundEvent(
                envelope=node.envelope(self.id),
                round=meta.round - 1,
                action="closed",
                reason=reason,
                arrived=len(updates),
                quorum=len(updates),
                version=meta.version,
            )
        )
        values = {
            "members": float(live),
            "arrived": float(len(updates)),
            "accepted": float(len(result.accepted)),
            "rejected": float(node.counters["rejected"] + len(result.rejected)),
            "staleness_mean": sum(stale) / len(stale) if stale else 0.0,
            "staleness_max": float(max(stale, default=0)),
            "bytes_in": float(self._bytes_in),
            "bytes_out": float(node.producer.bytes_sent),
            "residuals": float(len(residuals)),
            "aggregate_s": time.perf_counter() - started,
            "version": float(meta.version),
            "lag": float(self._lag),
            # holes in the update partition that had to be read again (brokers.kafka)
            "read_gaps": float(self._reader.gaps if self._reader is not None else 0),
        }
        values |= {
            k: v for k, v in result.info.items() if isinstance(v, float | int) and math.isfinite(v)
        }
        await node.metrics(meta.round - 1, values, federation=self.id)
        node.log.info(
            "round_closed",
            round=meta.round - 1,
            reason=reason,
            updates=len(updates),
            version=meta.version,
        )
        if exchange:
            await self._exchange_with_parent()
        await self._broadcast(final=meta.final)

    async def _exchange_with_parent(self) -> None:
        """Submit our update to the parent, wait for its broadcast, take B, keep K."""
        assert self._parent is not None and self.fed.parent is not None
        node, meta = self.node, self.meta
        if not meta.submit_id:
            meta.submit_id = new_update_id()
            self._save(model=False)
        delta = {
            n: (self.weights[n].float() - self.base[n].float())
            for n in self.weights
            if self.weights[n].is_floating_point()
        }
        encoded = encode_delta(
            delta,
            envelope=node.envelope(self.fed.parent),
            kind="update",
            base_version=meta.parent_version,
            sample_count=max(meta.samples, 1),
            round=meta.round,
            update_id=meta.submit_id,
            chunk_size=self.run_config.chunk_kib * 1024,
            signer=node.signer,
        )
        await publish_delta(node.producer, node.topics.up(self.level - 1), self.fed.parent, encoded)
        node.log.info("submitted_to_parent", parent=self.fed.parent, base=meta.parent_version)
        while True:
            if self.stop.is_set():
                raise Stopped
            broadcast = await self._parent.next(meta.parent_version, timeout_s=1.0)
            if broadcast is not None:
                break
        self.weights = take_parent(self.weights, broadcast.tensors, self.key, self.keep_key)
        self.base = {n: t.clone() for n, t in self.weights.items()}
        meta.parent_version = broadcast.version
        meta.version += 1
        meta.rounds_since_submit = 0
        meta.samples = 0
        meta.submit_id = ""
        meta.awaiting_parent = False
        meta.final = broadcast.final
        self._save()
        node.log.info("took_parent", parent_version=broadcast.version, final=broadcast.final)

    async def _broadcast(self, *, final: bool) -> None:
        node, meta = self.node, self.meta
        # Fencing: a replica that lost the lead (it stalled past the lease) must not publish.
        if self.lost_lead or not await node.state.lead(
            self.id, self.token, ttl_s=node.heartbeat_ttl_s
        ):
            if not self.lost_lead:
                self._lost_lead()
            raise Stopped
        encoded = encode_delta(
            self.weights,
            envelope=node.envelope(self.id),
            kind="broadcast",
            base_version=meta.version,
            version=meta.version,
            round=meta.round,
            metrics={"final": float(final), "parent_version": float(meta.parent_version)},
            chunk_size=self.run_config.chunk_kib * 1024,
            signer=node.signer,
        )
        published = await publish_delta(
            node.producer, node.topics.down(self.level), self.id, encoded
        )
        await node.state.set_model_version(
            self.id,
            meta.version,
            topic=published.topic,
            partition=published.partition,
            offset=published.first_offset,
        )
        node.log.info(
            "broadcast", version=meta.version, round=meta.round, final=final, bytes=published.bytes
        )


@dataclass
class _Record:
    """Where a reassembled update came from, to dead-letter it (payload not kept)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None = None
