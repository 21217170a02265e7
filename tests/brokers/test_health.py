"""The broker watch on a real broker: a memory broker killed is gone within seconds and ends
the work guarded by it, while aiokafka's own error storm is one line; a broker that keeps its
log is waited for (lost and back said once each), then given up; a memory broker restarted
empty on its port is found out by its missing topics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from brokers.admin import ensure_topics
from brokers.embedded import EmbeddedKafka
from brokers.health import BrokerHealth, HealthWatch
from brokers.kafka import KafkaSettings, Producer
from brokers.liveness import BrokerLost, State
from brokers.security import KafkaSecurity


async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


class Records(logging.Handler):
    """What aiokafka's loggers let through (their filters run before any handler)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_memory_broker_killed_ends_guarded_work_in_seconds_and_aiokafka_says_it_once(
    run_id: str,
) -> None:
    kafka = EmbeddedKafka()
    await kafka.start()
    settings = KafkaSettings(kafka.bootstrap, partitions=2)
    topic = f"{run_id}.t"
    await ensure_topics(settings, [topic])
    passed = Records()
    logging.getLogger("aiokafka").addHandler(passed)
    health, producer = BrokerHealth(settings), Producer(settings)
    stopped = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    try:
        with capture_logs() as logs:
            await health.start()
            await producer.start()
            assert health.watch is not None and not health.watch.core.keeps_log  # in memory
            await kafka.kill()
            sending = asyncio.ensure_future(producer.send(topic, b"x", partition=0))
            async with asyncio.timeout(60):
                with pytest.raises(BrokerLost) as lost:
                    await health.guard(work())
            assert stopped.is_set() and health.gone
            assert lost.value.gone.reason == "unreachable" and not lost.value.keeps_log
            await producer.abandon(health.error())  # a stop need not wait for this send
            with pytest.raises(BrokerLost):
                await sending
            await producer.stop()
        events = [e["event"] for e in logs if e["event"].startswith("kafka_")]
        assert events == ["kafka_gone"]
        assert health.watch.counters["log_suppressed"] > 0
        assert len(passed.records) <= 1, [r.getMessage() for r in passed.records]
    finally:
        logging.getLogger("aiokafka").removeHandler(passed)
        await producer.stop()
        await health.stop()
        await kafka.stop()


async def test_a_broker_that_keeps_its_log_is_waited_for_lost_and_back_said_once_then_given_up(
    run_id: str,
) -> None:
    kafka = EmbeddedKafka()
    await kafka.start()
    try:
        with capture_logs() as logs:
            watch = HealthWatch(kafka.bootstrap, KafkaSecurity.from_env(), keeps_log=True, wait_s=4)
            await watch.start()
            try:
                await kafka.kill()
                await until(lambda: watch.state is State.LOST)
                failed = watch.counters["probes_failed"]
                # lost a while (a probe more failed): said once, still waited for
                await until(lambda: watch.counters["probes_failed"] > failed)
                assert not watch.gone.is_set()
                await kafka.start()  # on the same port
                await until(lambda: watch.state is State.UP)
                await kafka.kill()
                await until(watch.gone.is_set)
            finally:
                await watch.stop()
        events = [e["event"] for e in logs if e["event"].startswith("kafka_")]
        assert events == [
            "kafka_lost", "kafka_back", "kafka_lost", "kafka_gone", "kafka_watch_stopped"
        ]  # fmt: skip
        assert watch.counters["outages"] == 2
        assert watch.error().describe(3).startswith(f"Kafka at {kafka.bootstrap} unreachable")
    finally:
        await kafka.stop()


async def test_a_memory_broker_restarted_empty_on_its_port_is_found_out_by_its_topics(
    run_id: str,
) -> None:
    kafka = EmbeddedKafka()
    await kafka.start()
    topic = f"{run_id}.t"
    await ensure_topics(KafkaSettings(kafka.bootstrap, partitions=2), [topic])
    # Never lost by unreachability here: only what the broker answers can end it.
    watch = HealthWatch(
        kafka.bootstrap, KafkaSecurity.from_env(), keeps_log=False, lost_after_s=600
    )
    await watch.start()
    try:
        await kafka.kill()
        await kafka.start()
        await until(watch.gone.is_set)
        assert watch.lost is not None and watch.lost.reason == "emptied"
        assert topic in watch.lost.missing
    finally:
        await watch.stop()
        await kafka.stop()
