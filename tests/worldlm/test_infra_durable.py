"""``worldlm infra up --durable DIR`` keeps the embedded broker's log in DIR: after the whole
process is SIGKILLed (its servers die with it), a new one on the same directory serves the
same records at the same offsets (real servers, the real CLI)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from brokers.admin import ensure_topics
from brokers.embedded import free_port
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from tests.worldlm.participants.helpers import participant_process

TOPIC = "worldlm.durable-cli.metrics"


async def until_up(settings: KafkaSettings) -> None:
    """Until the broker answers (creating the topic, which is idempotent)."""
    async with asyncio.timeout(120):
        while True:
            try:
                await ensure_topics(settings, [TOPIC], partitions=1)
                return
            except Exception:
                await asyncio.sleep(0.5)


async def until_down(port: int) -> None:
    """Until nothing listens on ``port`` (the killed process's broker is gone)."""
    async with asyncio.timeout(60):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return
            writer.close()
            await asyncio.sleep(0.2)


async def read(settings: KafkaSettings, count: int) -> list[tuple[int, bytes]]:
    found: list[tuple[int, bytes]] = []
    async with PartitionReader(settings, {TopicPartition(TOPIC, 0): 0}) as reader:
        async with asyncio.timeout(60):
            while len(found) < count:
                found += [(r.offset, r.value or b"") for r in await reader.fetch(timeout_ms=200)]
    return found


@pytest.mark.timeout(400)
async def test_infra_up_durable_serves_the_log_again_after_the_process_is_killed(
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = KafkaSettings(f"127.0.0.1:{port}", partitions=1)
    args = ["infra", "up", "--durable", str(tmp_path / "log"), "--kafka-port", str(port)]
    values = [f"report {i}".encode() for i in range(5)]
    async with participant_process(args, tmp_path / "first.log") as first:
        await until_up(settings)
        async with Producer(settings) as producer:
            sent = await producer.send_many(TOPIC, values, partition=0)
        first.send_signal(signal.SIGKILL)  # the whole thing dies; its servers with it
        await first.wait()
    await until_down(port)

    async with participant_process(args, tmp_path / "second.log"):
        await until_up(settings)
        expected = [(md.offset, v) for md, v in zip(sent, values, strict=True)]
        assert await read(settings, len(values)) == expected
