"""Every member's heartbeat in one process, renewed together: one round trip per period.

A hundred participants in one process (``worldlm run``) would otherwise each keep a task and a
Redis round trip per beat. Members are grouped by Redis URL (the pool they share, ``brokers/
shared.py``) and period; each group has one task that renews all of its members in one
pipeline. The task only awaits Redis — local training runs in worker threads — so training
cannot starve it. A member that had expired (a long stall) and is renewed is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from brokers.state import RedisState

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Beat:
    """One member's heartbeat: where, for how long, and whom to tell of a re-join."""

    state: RedisState
    federation: str
    member: str
    ttl_s: float
    role: str
    on_rejoin: Callable[[], None]


class _Group:
    """The members beating through one Redis pool at one period, and their task."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.beats: dict[tuple[str, str], Beat] = {}
        self.task: asyncio.Task[None] | None = None
        self.rounds = 0  # round trips so far (one per period, whatever the members)

    async def _loop(self) -> None:
        failing = False
        while self.beats:
            await asyncio.sleep(self.period_s)
            beats = list(self.beats.values())
            if not beats:
                return
            try:
                joined = await beats[0].state.heartbeats(
                    [(b.federation, b.member, b.ttl_s, b.role) for b in beats]
                )
            except Exception as exc:  # Redis's own retries are spent; the next period tries
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # redis-py turned it into an error
                    return  # cancelled by remove(), its owner: end as asked
                if not failing:
                    log.error("heartbeats_failed", members=len(beats), error=repr(exc))
                failing = True
                continue
            failing = False
            self.rounds += 1
            for beat, rejoined in zip(beats, joined, strict=True):
                if rejoined:
                    beat.on_rejoin()


class Heartbeats:
    """The process's heartbeat groups, within one running loop."""

    def __init__(self) -> None:
        self._groups: dict[tuple[int, str, float], _Group] = {}

    def _key(self, beat: Beat, period_s: float) -> tuple[int, str, float]:
        return (id(asyncio.get_running_loop()), beat.state.url, period_s)

    def add(self, beat: Beat, period_s: float) -> None:
        """Renew ``beat`` every ``period_s`` from now on (with its group's members)."""
        group = self._groups.setdefault(self._key(beat, period_s), _Group(period_s))
        group.beats[(beat.federation, beat.member)] = beat
        if group.task is None:
            group.task = asyncio.create_task(group._loop(), name="heartbeats")
            group.task.add_done_callback(_failed)

    async def remove(self, beat: Beat, period_s: float) -> None:
        """Stop renewing ``beat``; the group's task ends with its last member."""
        group = self._groups.get(self._key(beat, period_s))
        if group is None or group.beats.pop((beat.federation, beat.member), None) is None:
            return
        if not group.beats and group.task is not None:
            task, group.task = group.task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def tasks(self) -> int:
        """Heartbeat tasks running now, over every loop (tests count them)."""
        return sum(g.task is not None for g in self._groups.values())


def _failed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("heartbeats_stopped", error=repr(task.exception()))


#: The process's heartbeats.
heartbeats = Heartbeats()
