"""The process shell of ``--workers`` with stand-in children (tiny Python scripts that speak
its pipe protocol): released together, a failure named and the others stopped, a stop
forwarded, a child that ignores it killed. No servers; the real children are in test_workers.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.worldlm.participants.helpers import poll
from worldlm.participants import workers
from worldlm.participants.shares import Assignment, Share
from worldlm.participants.workers import Worker, WorkerPool

#: Says ready, waits for go, writes "released" to FILE, then acts on MODE.
CHILD = """
import signal, sys, time
mode, marker = sys.argv[1], sys.argv[2]
if mode == "term-ignored":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
if mode == "quits-early":
    sys.exit(0)
sys.stdout.write("ready\\n"); sys.stdout.flush()
if sys.stdin.readline() != "go\\n":
    sys.exit(5)
open(marker, "w").write("released")
print("a line for the parent", flush=True)
if mode.startswith("exit-"):
    sys.exit(int(mode.split("-")[1]))
while mode == "term-ignored":
    time.sleep(1)
while sys.stdin.readline():  # until the parent closes the pipe, or a signal
    pass
"""


def pool(tmp_path: Path, *modes: str) -> tuple[WorkerPool, list[str]]:
    said: list[str] = []
    children = [
        Worker(
            Assignment(Share(i, len(modes)), (f"fed{i}",), (f"c{i}",), 1.0),
            [sys.executable, "-c", CHILD, mode, str(tmp_path / f"released-{i}")],
        )
        for i, mode in enumerate(modes, start=1)
    ]
    return WorkerPool(children, said.append), said


def released(tmp_path: Path, i: int) -> bool:
    return (tmp_path / f"released-{i}").exists()


def both_released(tmp_path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return released(tmp_path, 1) and released(tmp_path, 2)

    return check


async def test_children_are_released_together_and_their_output_is_prefixed(
    tmp_path: Path,
) -> None:
    p, said = pool(tmp_path, "exit-0", "exit-0")
    async with asyncio.timeout(60), p:
        exits = await p.run(asyncio.Event())
    assert [(e.returncode, e.ready) for e in exits] == [(0, True), (0, True)]
    assert p.failures == [] and released(tmp_path, 1) and released(tmp_path, 2)
    assert "[1/2] a line for the parent" in said and "[2/2] a line for the parent" in said
    assert any(line.startswith("worker 1/2 (pid ") and "fed1, c1" in line for line in said)


async def test_a_failing_child_is_named_and_the_others_are_stopped(tmp_path: Path) -> None:
    p, said = pool(tmp_path, "exit-3", "waits")
    async with asyncio.timeout(60), p:
        exits = await p.run(asyncio.Event())
    assert [e.returncode for e in exits] == [3, 0]  # the other one stopped cleanly
    assert [e.assignment.share for e in p.failures] == [Share(1, 2)]
    pid = exits[0].pid
    assert f"worker 1/2 (pid {pid}; fed1, c1) exited with status 3; stopping the other workers" in (
        said
    )


async def test_a_child_that_ends_before_it_is_ready_fails_the_run(tmp_path: Path) -> None:
    p, _ = pool(tmp_path, "quits-early", "waits")
    async with asyncio.timeout(60), p:
        await p.run(asyncio.Event())
    assert [f.describe().endswith("exited before it was ready") for f in p.failures] == [True]
    assert not released(tmp_path, 2)  # nobody was released without every share


async def test_a_stop_is_forwarded_and_a_clean_stop_is_no_failure(tmp_path: Path) -> None:
    p, _ = pool(tmp_path, "waits", "waits")
    stop = asyncio.Event()
    async with asyncio.timeout(60), p:
        running = asyncio.create_task(p.run(stop))
        await poll(both_released(tmp_path))
        stop.set()
        exits = await running
    assert [e.returncode for e in exits] == [0, 0] and p.failures == []


async def test_a_child_that_ignores_the_stop_is_killed_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "TERM_GRACE_S", 0.5)
    p, _ = pool(tmp_path, "term-ignored", "waits")
    stop = asyncio.Event()
    async with asyncio.timeout(60), p:
        running = asyncio.create_task(p.run(stop))
        await poll(both_released(tmp_path))
        stop.set()
        exits = await running
    assert [e.returncode for e in exits] == [-signal.SIGKILL, 0]
    assert [f.describe() for f in p.failures] == [
        f"worker 1/2 (pid {exits[0].pid}; fed1, c1) was killed by SIGKILL"
    ]
