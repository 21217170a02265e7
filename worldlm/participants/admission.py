"""What the aggregator shell reads, offered to its federation core.

The intake hands over decoded updates and the records it could not decode; each update goes
to the core's :meth:`~worldlm.core.federation.FederationCore.offer` with the
revocations as of its batch, and what the core admits is made durable (its delta, then the
offset that delivered it) before anyone is told; what it refuses, or the intake could not
read, is dead-lettered. The members a round counts on come from the roster, decided by the
core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from brokers.deltas import Received
from schemas.errors import WireError
from worldlm.core.federation import Accepted, FederationCore, Refused
from worldlm.participants.intake import UpdateOrigin

if TYPE_CHECKING:
    from worldlm.participants.books import RoundBooks
    from worldlm.participants.checkpoint import Checkpoint
    from worldlm.participants.intake import Intake
    from worldlm.participants.node import Node


class Admission:
    """Feeds one federation's core from its intake (``save`` checkpoints the core)."""

    def __init__(
        self,
        node: Node,
        core: FederationCore,
        intake: Intake,
        checkpoint: Checkpoint,
        books: RoundBooks,
        save: Callable[[], Awaitable[None]],
    ) -> None:
        self.node, self.core, self.intake = node, core, intake
        self.checkpoint, self.books, self.save = checkpoint, books, save
        self.id = core.id

    async def admit(self, found: list[Any]) -> list[str]:
        """Offer what the intake read to the core; the senders of the admitted updates."""
        arrived = []
        revoked: set[str] = set()
        if any(isinstance(i, Received) for i in found):
            revoked = set(await self.node.revocations.revoked())  # the chain as of this batch
        for i, item in enumerate(found):
            if isinstance(item, Received):
                # a checkpoint must not pass what this batch has not offered yet
                hold = min((_first_offset(later) for later in found[i + 1 :]), default=None)
                if (sender := await self._offer(item, revoked, hold)) is not None:
                    arrived.append(sender)
            else:
                record, rejected = item
                await self.books.dead_letter(record, rejected.reason, rejected.detail)
        for update_id in self.intake.take_repeats():
            self.core.repeated(update_id)
        return arrived

    async def _offer(self, received: Received, revoked: set[str], hold: int | None) -> str | None:
        """Offer one update to the core; its sender if admitted (durably), else None. The
        offset recorded with it stays at or below ``hold`` (the first record of the batch
        not offered yet)."""
        node, core, m = self.node, self.core, received.delta.manifest
        source = UpdateOrigin(received.topic, received.partition, received.first_offset)
        try:
            offer = self.intake.make_offer(received, revoked)
        except WireError as exc:  # e.g. a malformed codec map: refused, counted here
            await self.books.dead_letter(source, exc.reason, str(exc))
            return None
        decision = core.offer(offer)
        if isinstance(decision, Refused):
            await self.books.refused(source, decision)
            return None
        if not isinstance(decision, Accepted):
            return None  # a duplicate: already folded or pending
        # Durable first, then the offset that delivered it (written off the event loop).
        await asyncio.to_thread(self.checkpoint.save_pending, m.update_id, offer.delta)
        safe = self.intake.safe_after(received)
        core.read_to(self.intake.name, safe if hold is None else min(safe, hold))
        await self.save()
        self.books.bytes_in += m.total_bytes
        await node.state.record_staleness(self.id, decision.sender, decision.staleness)
        node.log.info(
            "update_accepted",
            sender=decision.sender,
            staleness=decision.staleness,
            round=core.round,
        )
        return decision.sender

    async def members(self) -> int:
        """The members the open round counts on (the core decides who, from the roster)."""
        state = self.node.state
        live = len((await state.roster(self.id)).live)
        return self.core.expected(live, await state.departed(self.id))

    async def show(self, senders: Sequence[str], members: int) -> None:
        """Arrivals are shown in Redis for others to see (idempotent); the quorum is the
        core's, the script only records it."""
        quorum = self.core.needed(members)
        for sender in senders:
            await self.node.state.arrive(self.id, self.core.round, sender, quorum=quorum)


def _first_offset(item: Received | tuple[Any, Any]) -> int:
    """Where an item of a read batch starts on the partition."""
    return item.first_offset if isinstance(item, Received) else int(item[0].offset)
