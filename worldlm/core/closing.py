"""When a federation's round closes: who it counts on, how many updates it needs, and why it
closes now. Part of the round core (:class:`~worldlm.core.federation.FederationCore` is built
on it); pure: the shell passes the time and the members in.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from worldlm.config.schema import ScheduleConfig
from worldlm.core.rounds import Pending
from worldlm.core.steps import Meta


class CloseRules:
    """The close rule of the core's open round, read from its own fields."""

    meta: Meta
    pending: list[Pending]
    schedule: ScheduleConfig
    _members: frozenset[str]

    @property
    def open(self) -> bool:
        """Whether a round is open (not waiting for the parent, not finished)."""
        return not (self.meta.awaiting_parent or self.meta.final)

    def open_round(self, now: float) -> None:
        """Start the round's clock; a round opened again (after a restart) keeps its own,
        and a new round gets a new one even when updates are already pending (sent while
        the federation waited for its parent)."""
        if self.meta.clock_round != self.meta.round or self.meta.round_opened == 0:
            self.meta.round_opened = now
            self.meta.clock_round = self.meta.round

    def expected(self, live: int, departed: Collection[str] = ()) -> int:
        """The members a round counts on (its quorum is a fraction of them).

        ``wait_for = "declared"`` (the default): every declared member that has not left
        cleanly (``departed``), heartbeating or not: a member whose process died, or whose
        aggregator is being replaced, is waited for until the deadline, so a kill does not
        change who a round folds. ``"live"``: only the ``live`` members heartbeating now (a
        dead member stops counting once its heartbeat expires).
        """
        if self.schedule.wait_for == "live":
            return live
        return len(self._members - set(departed))

    def quorum(self, members: int) -> int:
        """Updates a ``sync`` round needs: a fraction of the members it counts on
        (:meth:`expected`), at least the minimum."""
        return max(self.schedule.min_quorum, math.ceil(members * self.schedule.quorum - 1e-9))

    def needed(self, members: int) -> int:
        """Updates the open round closes at: the ``async`` buffer, or the ``sync`` quorum."""
        return self.schedule.buffer if self.schedule.mode == "async" else self.quorum(members)

    def close_reason(self, now: float, members: int) -> str | None:
        """Why the open round closes now: ``quorum`` (sync) or ``buffer`` (async) once enough
        arrived; else past ``deadline_s``, whether or not anything arrived, ``deadline`` with
        what is pending or ``empty`` with nothing (silent members must not hang a parent)."""
        if not self.open:
            return None
        if self.pending and self.schedule.mode == "async":
            if len(self.pending) >= self.schedule.buffer:
                return "buffer"
        elif self.pending and len({p.sender for p in self.pending}) >= self.quorum(members):
            return "quorum"
        if now - self.meta.round_opened > self.schedule.deadline_s:
            return "deadline" if self.pending else "empty"
        return None
