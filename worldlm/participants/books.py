"""The aggregator shell's own accounting of a round, kept beside its core's.

The core counts and names what it decides (admitted, duplicate, refused, folded). The shell
dead-letters what never reached the core (undecodable records, a malformed codec map), counts
the bytes it admitted, and knows which offsets of its update partition a round's decisions
cover. At the close the two parts make the round's metrics and its
:class:`~schemas.messages.RoundLedger`, which ``worldlm audit`` checks. Each metric has one
owner: ``rejected`` is the core's (updates it refused or its strategy declined, as in a
simulation), ``unreadable`` the shell's (records it could not read: they never reached the
core).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from schemas.messages import RoundEvent

if TYPE_CHECKING:
    from schemas.messages import RoundLedger
    from worldlm.core.federation import Closed, FederationCore, Refused
    from worldlm.participants.intake import Intake
    from worldlm.participants.node import Node, Origin


class RoundBooks:
    """What the aggregator shell dead-lettered, read and covered, per round and in total."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.bytes_in = 0  # of admitted updates, since the start
        self.dead_letters = 0  # records this shell dead-lettered in the round (not the core's)
        self.covered_from = 0  # the intake offset the round's decisions started from

    async def dead_letter(self, record: Origin, reason: str, detail: str) -> None:
        """Dead-letter a record the shell refused itself: counted here and by the node."""
        self.dead_letters += 1
        await self.node.dead_letter(record, reason, detail)

    async def refused(self, record: Origin, refusal: Refused) -> None:
        """Dead-letter an update the core refused (the core counted it already)."""
        await self.node.dead_letter(record, refusal.reason, refusal.detail, count=False)

    async def event(
        self,
        action: Literal["opened", "closed"],
        round: int,
        version: int,
        reason: str = "",
        arrived: int = 0,
        quorum: int = 0,
    ) -> None:
        """Announce a round's opening or close to the run: the close's reason, the members
        ``arrived`` (pending when it opened, folded when it closed) and the ``quorum`` the
        round core asks of the round (0: not given)."""
        envelope = self.node.envelope(self.node.id)
        event = RoundEvent(
            envelope, round, action, reason, arrived=arrived, quorum=quorum, version=version
        )
        await self.node.event(event)

    def close(
        self, closed: Closed, intake: Intake, end: int, aggregate_s: float
    ) -> tuple[dict[str, float], RoundLedger]:
        """The round's metrics and ledger: the core's, with the shell's part added; ``end`` is
        the intake offset below which every record has been decided."""
        node = self.node
        values = closed.values | {
            "bytes_in": float(self.bytes_in),
            "bytes_out": float(node.producer.bytes_sent),
            "aggregate_s": aggregate_s,
            # the most records intake was behind the partition's end during the round
            "lag": float(intake.lag),
            # records dead-lettered unread, before any decision of the core's (run total;
            # "rejected" is the core's: updates it refused or its strategy declined)
            "unreadable": float(node.counters["unreadable"]),
            "read_gaps": float(intake.gaps[0]),
            "round_dead_lettered": closed.values["round_dead_lettered"] + self.dead_letters,
            # linked residual-cache entries skipped because they did not open (run total)
            "residual_unreadable": float(node.counters["residual_unreadable"]),
            # revocation entries ignored (not the admin's, or out of place) and lists found
            # no longer extending what this reader verified (run totals)
            "revocations_ignored": float(node.counters["revocations_ignored"]),
            "revocations_tampered": float(node.counters["revocations_tampered"]),
        }
        ledger = msgspec.structs.replace(
            closed.ledger,
            dead_lettered=closed.ledger.dead_lettered + self.dead_letters,
            offsets={intake.name: (self.covered_from, end)},
        )
        return values, ledger

    def next_round(self, start: int) -> None:
        """Start the next round's books at intake offset ``start``."""
        self.dead_letters, self.covered_from = 0, start

    def summary(self, core: FederationCore, intake: Intake) -> dict[str, int]:
        """The counters of the shutdown line: the core's, the node's and the intake's."""
        return {
            "round": core.meta.round,
            "version": core.meta.version,
            "read_gaps": intake.gaps[0],
            "read_gaps_skipped": intake.gaps[1],
            **dict(core.counters),
            **dict(self.node.counters),
            **intake.receiver.reassembler.counters.as_dict(),
        }
