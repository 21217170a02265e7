"""The aggregator participant: the live I/O shell around a federation's round core.

Every decision (admission, quorum/deadline/buffer, close, the exchange with the parent) is
the :class:`~worldlm.core.federation.FederationCore`'s; this shell reads the
federation's update partition, feeds the core, and publishes what it decides: dead letters,
residual-cache entries, round events, metrics, the upward submission and broadcasts.

The checkpoint (core snapshot plus the offsets it covers) is the single source of truth of a
round; Redis shows others what they need (membership, the model pointer, arrivals, the
residual cache). Delivery is at-least-once and nothing is counted twice: an admitted update
is checkpointed before its offset is, and a re-read update is a duplicate by id. While the
federation waits for its parent's broadcast it keeps reading its children. Checkpoints are
written in a worker thread (the process's event loop goes on); a close is checkpointed before
it is announced, and a model taken from the parent while it is broadcast on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from schemas.delta import new_update_id
from worldlm.config.hierarchy import Hierarchy
from worldlm.core import steps
from worldlm.core.federation import FederationCore
from worldlm.core.rounds import Snapshot
from worldlm.core.stopping import Stopped
from worldlm.participants.admission import Admission
from worldlm.participants.announcer import Announcer, Notice
from worldlm.participants.books import RoundBooks
from worldlm.participants.cache import ResidualCache
from worldlm.participants.checkpoint import Checkpoint
from worldlm.participants.follower import Broadcast, BroadcastFollower, follow
from worldlm.participants.intake import Intake
from worldlm.participants.lease import Lease
from worldlm.participants.node import Endpoints, Node, bounded
from worldlm.training.workbench import federation_key, initial_weights

#: How often membership, deadlines and expired partial updates are checked.
TICK_S = 0.5


class AggregatorParticipant:
    """One federation's aggregator."""

    def __init__(
        self, hierarchy: Hierarchy, endpoints: Endpoints, federation: str, *, checkpoint_dir: Path
    ) -> None:
        self.core = FederationCore(
            hierarchy,
            federation,
            initial_weights(hierarchy.run),
            key=federation_key(hierarchy, federation),
            new_id=new_update_id,
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
        self.intake = Intake(
            self.node.settings,
            self.node.topics.up(federation),
            federation,
            keys=self.node.public_keys,
            unsealer=self.node.unsealer,
            reload_keys=self.node.keys.reload if self.node.keys is not None else None,
        )
        self._parent: BroadcastFollower | None = None
        self._parent_wait: asyncio.Task[Broadcast | None] | None = None
        self.books = RoundBooks(self.node)  # the shell's part of each round's accounting
        self.announcer = Announcer(self.node, federation, self.books)
        self.cache = ResidualCache(self.node, hierarchy, federation)
        self.admission = Admission(
            self.node,
            self.core,
            self.intake,
            self.checkpoint,
            self.books,
            lambda: self._save(model=False),
        )

    @property
    def token(self) -> str:
        return self.lease.token

    @property
    def lost_lead(self) -> bool:
        return self.lease.lost

    async def run(self) -> None:
        """Aggregate until the run's final broadcast, ``stop``, a lost lead or broker."""
        await self.node.start()
        try:
            await self.node.broker.guard(self.lease.acquire(self.stop))
            await self.node.broker.guard(self._lead())  # the broker gone ends it
        except Stopped:  # while standing by: _lead catches its own
            self.node.log.info("aggregator_stopped", standing_by=True)
        finally:
            await bounded(self.node.log, "resign", self.lease.release())
            await self.node.stop()

    async def _lead(self) -> None:
        node, core = self.node, self.core
        await self._restore()
        self.books.covered_from = core.offset(self.intake.name)
        await self.intake.start(self.books.covered_from)
        try:
            if self.fed.parent is not None:
                self._parent = follow(node, self.fed.parent)
                await self._parent.start(self.stop)
            await node.join()
            if core.unreported:  # saved, maybe not announced, before a restart
                await self.announcer.resume(Notice.from_json(core.unreported))
                core.hold_notice({})
            pointer = await node.state.model_version(self.id)
            # what the last start left undone, in the order the core gives
            await self._carry(core.next_steps(pointer.version if pointer else None))
            await self._loop()
        except Stopped:
            node.log.info("aggregator_stopping")
        finally:
            if self._parent_wait is not None:
                self._parent_wait.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._parent_wait
            await bounded(node.log, "intake", self.intake.stop())
            if self._parent is not None:
                await bounded(node.log, "parent_follower", self._parent.stop())
            if self.lease.lost:  # the membership is the new leader's
                pass
            elif core.final:
                await bounded(node.log, "leave", node.leave())
            else:  # the federation stays a member of its parent: a replacement resumes it
                await bounded(node.log, "heartbeat", node.stop_heartbeat())
            node.log.info("aggregator_stopped", **self.books.summary(core, self.intake))

    async def _loop(self) -> None:
        """Intake, parent and close, until the final broadcast.

        Event-driven: the loop wakes when updates arrive (the intake's read returns as soon as
        records come), when the parent's broadcast is complete, on ``stop``, or every
        ``TICK_S`` for what only time changes (membership, deadlines, partial updates).
        """
        core, last_tick = self.core, 0.0
        name = self.intake.name
        stopping = asyncio.ensure_future(self.stop.wait())
        reading: asyncio.Task[tuple[list[Any], int]] | None = None
        try:
            while not core.final:
                if self.stop.is_set():
                    raise Stopped
                if reading is None:
                    wait_ms = int(TICK_S * 1000)
                    reading = asyncio.create_task(self.intake.read(core.offset(name), wait_ms))
                wakers: set[asyncio.Future[Any]] = {reading, stopping}
                if self._parent_wait is not None:
                    wakers.add(self._parent_wait)
                tick_in = max(0.0, last_tick + TICK_S - time.monotonic())
                await asyncio.wait(wakers, timeout=tick_in, return_when=asyncio.FIRST_COMPLETED)
                arrived: list[str] = []
                if reading.done():
                    found, end = reading.result()
                    core.read_to(name, end)
                    reading = None
                    arrived = await self.admission.admit(found)
                if self._parent_wait is not None and self._parent_wait.done():
                    broadcast, self._parent_wait = self._parent_wait.result(), None
                    assert broadcast is not None  # next() without a timeout waits for one
                    await self._take_parent(broadcast)
                    continue
                now = time.monotonic()
                if now - last_tick >= TICK_S:
                    last_tick = now
                    self.intake.receiver.expire()
                    await self.node.expire_members(self.id)
                elif not arrived:
                    continue
                if arrived or core.open:  # an open round closes by its deadline, even empty
                    members = await self.admission.members()
                    await self.admission.show(arrived, members)
                    reason = core.close_reason(time.time(), members)
                    if reason is not None:
                        await self._close(reason, members)
        finally:
            for task in (reading, stopping):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    # -- rounds --------------------------------------------------------------------------

    async def _open_round(self) -> None:
        core = self.core
        core.open_round(time.time())
        members = await self.admission.members()
        if core.arrived:  # arrivals after a restart are shown again
            await self.admission.show(core.arrived, members)
        needed = core.needed(members)
        await self.books.event(
            "opened", core.round, core.version, arrived=len(core.arrived), quorum=needed
        )

    async def _close(self, reason: str, members: int) -> None:
        node, core = self.node, self.core
        started = time.perf_counter()
        links = self.hierarchy.residual_links(self.id) if core.key and core.arrived else ()
        residuals = await self.cache.read(links)
        closed = await asyncio.to_thread(
            core.close, reason, core.residual_entries(residuals), members
        )
        for rejection in closed.rejected:
            node.log.warning("update_declined", sender=rejection.sender, reason=rejection.reason)
        if closed.residual is not None:
            await self.cache.write(core.round, closed.residual)
        end = core.offset(self.intake.name)
        aggregate_s = time.perf_counter() - started
        values, ledger = self.books.close(closed, self.intake, end, aggregate_s)
        report = node.report(closed.round, values, federation=self.id, ledger=ledger)
        notice = self.announcer.notice(
            closed.round, reason, closed.version, len(closed.folded), report, core.needed(members)
        )
        core.hold_notice(notice.to_json())  # saved with the round: announced once
        await self._save()
        self.checkpoint.drop_pending(keep=set())
        await self.announcer.publish(notice)
        core.hold_notice({})  # the next save records it (until then a resume reads back)
        self.intake.lag = 0
        self.books.next_round(end)
        node.log.info(
            "round_closed",
            round=closed.round,
            reason=reason,
            updates=len(closed.folded),
            version=closed.version,
        )
        await self._carry(closed.next)

    async def _carry(self, next_steps: tuple[steps.Step, ...]) -> None:
        """Carry out what the core says happens next (the shell decides none of it)."""
        core = self.core
        for step in next_steps:
            match step:
                case steps.Submit(submission=submission):
                    assert self.fed.parent is not None
                    if submission is not None:
                        await self._save(model=False)  # the submission id survives a restart
                    await self.announcer.submit(self.fed.parent, submission, core.round)
                case steps.AwaitParent(after=after):  # awaited alongside intake
                    assert self._parent is not None
                    wait = self._parent.next(after)
                    self._parent_wait = asyncio.create_task(wait, name=f"parent-{self.id}")
                case steps.Broadcast():
                    if not await self.lease.fence():  # a replica that lost the lead
                        raise Stopped
                    await self.announcer.broadcast(core.weights, step, self.fed.members)
                case steps.OpenRound():
                    await self._open_round()
                case steps.Done():
                    pass

    async def _take_parent(self, broadcast: Broadcast) -> None:
        next_steps = self.core.take_parent(broadcast.tensors, broadcast.version, broadcast.final)
        self.node.log.info("took_parent", parent_version=broadcast.version, final=broadcast.final)
        # What was taken can be taken again from the parent's broadcast: its checkpoint is
        # written while this federation broadcasts it, not before (a restart in between
        # takes the same broadcast again and re-sends the same version), and it is complete
        # before anything else of this federation's happens.
        writing = asyncio.create_task(self._write(self._snapshot()), name=f"save-{self.id}")
        try:
            await self._carry(next_steps)
        finally:
            await writing

    # -- checkpoints ---------------------------------------------------------------------

    async def _restore(self) -> None:
        snapshot = self.checkpoint.load_snapshot()
        if snapshot is None:
            await self._save()
            return
        self.core.restore(snapshot)
        meta = snapshot.meta
        self.node.revocations.recall(meta.revocations)  # never un-revoke across a restart
        self.node.log.info(
            "aggregator_resumed",
            round=meta.round,
            version=meta.version,
            pending=len(snapshot.pending),
            offset=self.core.offset(self.intake.name),
        )

    async def _save(self, model: bool = True) -> None:
        """Write the core's snapshot now, in a worker thread: the event loop (every other
        participant of the process, the Kafka fetches) goes on meanwhile."""
        await self._write(self._snapshot(), model)

    def _snapshot(self) -> Snapshot:
        """The core's state as of now (a copy: later rounds do not change it)."""
        if self.lease.lost:  # the checkpoint is the new leader's now
            raise Stopped
        self.core.keep_revocations(self.node.revocations.saved)
        return self.core.snapshot()

    async def _write(self, snapshot: Snapshot, model: bool = True) -> None:
        await asyncio.to_thread(self.checkpoint.save_snapshot, snapshot, model=model)
