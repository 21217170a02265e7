"""Shared by the participant tests: tiny fast configs, topic readers, participant processes.

Every config is the tiny model on short sequences with a few local steps, so a round takes
a fraction of a second on two cores; each test names its own run (the ``run_id`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import TopicPartition

from brokers.deltas import DeltaReceiver, Received
from brokers.embedded import Servers
from brokers.kafka import KafkaSettings, PartitionReader, partition_for
from schemas.errors import WireError
from tests.waiting import until
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.participants.node import Endpoints

T = TypeVar("T")

#: What every test run shares: the tiny model, short windows, fast heartbeats.
FAST_RUN: dict[str, Any] = {
    "model": "tiny",
    "seq_len": 32,
    "batch_size": 4,
    "eval_batches": 2,
    "heartbeat_s": 0.5,  # expires after 1.5 s: fast, yet no false expiry on a busy CI box
    "partitions": 2,
}

#: The `worldlm` console script of this virtual environment.
WORLDLM = str(Path(sys.executable).with_name("worldlm"))


def endpoints(servers: Servers) -> Endpoints:
    return Endpoints(kafka=servers.kafka, redis=servers.redis)


def settings(servers: Servers, hierarchy: Hierarchy) -> KafkaSettings:
    return KafkaSettings(bootstrap=servers.kafka, partitions=hierarchy.run.partitions)


def hierarchy(
    run_id: str,
    *,
    federations: Mapping[str, Mapping[str, Any]],
    clients: Mapping[str, tuple[str, str]],
    rounds: int = 2,
    defaults: Mapping[str, Any] | None = None,
) -> Hierarchy:
    """A validated tiny config; ``clients`` maps id -> (federation, partition)."""
    raw = raw_config(
        run_id, federations=federations, clients=clients, rounds=rounds, defaults=defaults
    )
    return parse(raw)


def flat_raw(
    run_id: str, *, rounds: int = 2, schedule: Mapping[str, Any] | None = None, **defaults: Any
) -> dict[str, Any]:
    """The smallest real federation: a root with clients en-0 and de-0 (raw, to tweak)."""
    return raw_config(
        run_id,
        federations={"root": {}},
        clients={"en-0": ("root", "lang-en"), "de-0": ("root", "lang-de")},
        rounds=rounds,
        defaults={**defaults, "schedule": {"deadline_s": 30.0, **(schedule or {})}},
    )


def flat(
    run_id: str, *, rounds: int = 2, schedule: Mapping[str, Any] | None = None, **defaults: Any
) -> Hierarchy:
    """:func:`flat_raw`, validated."""
    return parse(flat_raw(run_id, rounds=rounds, schedule=schedule, **defaults))


def raw_config(
    run_id: str,
    *,
    federations: Mapping[str, Mapping[str, Any]],
    clients: Mapping[str, tuple[str, str]],
    rounds: int = 2,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "run": {**FAST_RUN, "id": run_id, "rounds": rounds},
        "defaults": {"local_steps": 2, **(defaults or {})},
        "federations": {f: dict(table) for f, table in federations.items()},
        "clients": {c: {"federation": f, "partition": p} for c, (f, p) in clients.items()},
    }


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    decode: Callable[[bytes], T],
    *,
    partitions: int,
    quiet_s: float = 0.5,
) -> list[T]:
    """Every decodable message on ``topic`` so far (until nothing new came for ``quiet_s``)."""
    start = {TopicPartition(topic, p): 0 for p in range(partitions)}
    found: list[T] = []
    async with PartitionReader(kafka, start) as reader:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while loop.time() - last < quiet_s:
            records = await reader.fetch(timeout_ms=100)
            if records:
                last = loop.time()
            for record in records:
                try:
                    found.append(decode(record.value or b""))
                except WireError:
                    continue
    return found


async def broadcasts(
    kafka: KafkaSettings, topic: str, federation: str, *, partitions: int
) -> list[Received]:
    """Every complete broadcast of ``federation`` on ``topic``, in order."""
    tp = TopicPartition(topic, partition_for(federation, partitions))
    receiver = DeltaReceiver()
    found: list[Received] = []
    async with PartitionReader(kafka, {tp: 0}) as reader:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while loop.time() - last < 0.5:
            records = await reader.fetch(timeout_ms=100)
            if records:
                last = loop.time()
            for record in records:
                if record.key != federation.encode():
                    continue
                result = receiver.feed(record)
                if isinstance(result, Received) and result.delta.manifest.kind == "broadcast":
                    found.append(result)
    return found


async def poll(check: Callable[[], Any], every_s: float = 0.1) -> Any:
    """Wait until ``await check()`` is truthy and return it (the caller's asyncio.timeout
    bounds it): :func:`tests.waiting.until` with no bound of its own."""
    return await until(check, timeout_s=3600.0, every_s=every_s)


@contextlib.asynccontextmanager
async def participant_process(
    args: list[str], log_file: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``worldlm <args>`` as its own process, JSON logs to ``log_file``; killed on exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_file.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            WORLDLM, *args, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env
        )
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def log_events(log_file: Path) -> list[dict[str, Any]]:
    """The structured log lines a participant process wrote (JSON off a TTY)."""
    events = []
    for line in log_file.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and "event" in entry:
                events.append(entry)
    return events
