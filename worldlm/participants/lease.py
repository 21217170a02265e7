"""A federation's lead: one aggregator replica holds a Redis lease and renews it.

Replicas of one federation's aggregator may run side by side with a shared checkpoint
directory: one leads, the others stand by and the first to take the expired lease resumes
from the checkpoint. Fencing: the leader checks the lease before every side effect others
can see (broadcasts, checkpoint writes), so a replica that stalled past its TTL stops
instead of publishing over its successor.

A renewal that fails (Redis unreachable) is retried at the next tick; once no renewal has
succeeded for a whole TTL the lease may have expired under us, so the lease counts as lost
and the replica stops: a renewal loop never outlives its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from brokers.state import RedisState
from worldlm.core.stopping import Stopped


class Lease:
    """One replica's claim on a federation's lead."""

    def __init__(
        self,
        state: RedisState,
        federation: str,
        *,
        ttl_s: float,
        log: Any,
        on_lost: Callable[[], None],
    ) -> None:
        self.state = state
        self.federation = federation
        self.ttl_s = ttl_s
        self.log = log
        self.on_lost = on_lost
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = False
        self.held = False
        self._renewal: asyncio.Task[None] | None = None

    async def acquire(self, stop: asyncio.Event) -> None:
        """Take the lead, standing by while another replica has it; :class:`Stopped` if
        ``stop`` is set first."""
        standing_by = False
        while not stop.is_set():
            if await self.state.lead(self.federation, self.token, ttl_s=self.ttl_s):
                if standing_by:
                    self.log.warning("took_over_lead", token=self.token)
                self.held = True
                self._renewal = asyncio.create_task(self._renew(), name=f"lead-{self.federation}")
                self._renewal.add_done_callback(self._renewal_done)
                return
            if not standing_by:
                standing_by = True
                self.log.info("standing_by", leader=await self.state.leader(self.federation))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.ttl_s / 3)
        raise Stopped(f"stopped standing by for {self.federation}")

    async def _renew(self) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                held = await self.state.lead(self.federation, self.token, ttl_s=self.ttl_s)
            except Exception as exc:  # Redis unreachable: retry until the lease may be gone
                if time.monotonic() - last_ok >= self.ttl_s:
                    self.log.error("lead_renewal_gave_up", error=repr(exc), ttl_s=self.ttl_s)
                    self._lose()
                    return
                self.log.warning("lead_renewal_failed", error=repr(exc))
                continue
            if not held:
                self._lose()
                return
            last_ok = time.monotonic()

    def _renewal_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("lead_renewal_crashed", error=repr(task.exception()))
            self._lose()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.log.error("lead_lost", token=self.token)
            self.on_lost()

    async def fence(self) -> bool:
        """Whether we still hold the lead (checked in Redis); losing it stops this replica."""
        if self.lost:
            return False
        if not await self.state.lead(self.federation, self.token, ttl_s=self.ttl_s):
            self._lose()
            return False
        return True

    async def release(self) -> None:
        """Stop renewing; resign unless the lead is someone else's now (idempotent)."""
        task, self._renewal = self._renewal, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.held and not self.lost:
            self.held = False
            await self.state.resign(self.federation, self.token)
