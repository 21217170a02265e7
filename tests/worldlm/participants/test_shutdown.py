"""Stopping always finishes: a shutdown step that hangs or fails is logged and skipped."""

from __future__ import annotations

import asyncio

import structlog
from structlog.testing import capture_logs

from worldlm.participants.node import bounded


async def test_a_hanging_shutdown_step_is_skipped_after_its_timeout_and_named() -> None:
    done: list[str] = []

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def works() -> None:
        done.append("works")

    log = structlog.get_logger("t")
    with capture_logs() as logs:
        async with asyncio.timeout(5):  # the steps together, not forever
            await bounded(log, "follower", hangs(), timeout_s=0.05)
            await bounded(log, "producer", works(), timeout_s=0.05)
    assert done == ["works"]
    assert [(e["event"], e["step"]) for e in logs] == [("shutdown_step_timed_out", "follower")]


async def test_a_failing_shutdown_step_is_logged_and_the_next_one_still_runs() -> None:
    done: list[str] = []

    async def fails() -> None:
        raise ConnectionError("redis went away")

    async def works() -> None:
        done.append("works")

    log = structlog.get_logger("t")
    with capture_logs() as logs:
        await bounded(log, "leave", fails())
        await bounded(log, "redis", works())
    assert done == ["works"]
    assert logs[0]["event"] == "shutdown_step_failed" and logs[0]["step"] == "leave"
    assert "redis went away" in logs[0]["error"]
