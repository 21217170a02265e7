"""Fetch-wait benchmark: what a reader's ``fetch_max_wait_ms`` costs idle and gains in latency.

A reader at the end of a partition asks the broker for records and the broker may hold the
request up to ``fetch_max_wait_ms`` when it has none. Apache Kafka answers the moment records
arrive; the embedded broker (Tansu) looks again within the wait. So the setting trades:

- **latency**: a record produced while a reader waits at the tail reaches it after
  (median, p90 over ``--records`` records sent ``--gap-ms`` apart) ms;
- **idle cost**: ``--idle`` readers at the tail of empty partitions for ``--idle-s`` seconds
  cost CPU in this process (aiokafka's fetch loop) and in the broker: the share of one core
  each, from ``/proc``.

Each trial measures every wait on one fresh embedded broker, in alternating order; every
trial is printed, then the medians per wait.

    python benchmarks/fetch_wait.py [--waits 10,100] [--trials 7] [--idle 8] [--idle-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from aiokafka import TopicPartition

from brokers.admin import ensure_topics
from brokers.embedded import EmbeddedKafka
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from worldlm.logs import configure


def own_cpu_s() -> float:
    """User + system CPU seconds of this process."""
    t = os.times()
    return t.user + t.system


async def idle_cost(kafka: EmbeddedKafka, wait: int, readers: int, seconds: float) -> tuple:
    """Cores used by this process and by the broker while ``readers`` readers wait idle."""
    settings = KafkaSettings(kafka.bootstrap, partitions=readers, fetch_max_wait_ms=wait)
    topic = f"idle-{wait}-{time.monotonic_ns()}"
    await ensure_topics(settings, [topic])
    stop = asyncio.Event()

    async def follow(reader: PartitionReader) -> None:
        while not stop.is_set():
            await reader.fetch(timeout_ms=1000)

    started = [PartitionReader(settings, {TopicPartition(topic, p): 0}) for p in range(readers)]
    for reader in started:
        await reader.start()
    tasks = [asyncio.create_task(follow(r)) for r in started]
    await asyncio.sleep(1.0)  # settle: assignment, first fetches
    ours, broker, t0 = own_cpu_s(), kafka.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    ours, broker = (own_cpu_s() - ours) / elapsed, (kafka.cpu_seconds() - broker) / elapsed
    stop.set()
    await asyncio.gather(*tasks)
    for reader in started:
        await reader.stop()
    return ours, broker


async def latency(kafka: EmbeddedKafka, wait: int, records: int, gap_ms: int) -> list[float]:
    """Milliseconds from each send to its arrival at a reader waiting at the tail."""
    settings = KafkaSettings(kafka.bootstrap, partitions=1, fetch_max_wait_ms=wait)
    topic = f"lat-{wait}-{time.monotonic_ns()}"
    await ensure_topics(settings, [topic])
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    async with PartitionReader(settings, {TopicPartition(topic, 0): 0}) as reader:

        async def follow() -> None:
            while len(arrived) < records:
                for record in await reader.fetch(timeout_ms=1000):
                    arrived[int.from_bytes(record.value, "big")] = time.perf_counter()

        task = asyncio.create_task(follow())
        await asyncio.sleep(1.0)  # the reader is at the tail
        async with Producer(settings) as producer:
            for i in range(records):
                sent[i] = time.perf_counter()
                await producer.send(topic, i.to_bytes(4, "big"), partition=0)
                await asyncio.sleep(gap_ms / 1000)
        await asyncio.wait_for(task, timeout=30)
    return [(arrived[i] - sent[i]) * 1000 for i in range(records)]


def quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


async def main(args: argparse.Namespace) -> None:
    waits = [int(w) for w in args.waits.split(",")]
    rows: dict[int, list[tuple[float, float, float, float]]] = {w: [] for w in waits}
    header = "trial wait_ms  latency_p50_ms  latency_p90_ms  idle_cores_ours  idle_cores_broker"
    print(header)
    for trial in range(args.trials):
        order = waits if trial % 2 == 0 else list(reversed(waits))
        async with EmbeddedKafka() as kafka:
            for wait in order:
                lat = await latency(kafka, wait, args.records, args.gap_ms)
                ours, broker = await idle_cost(kafka, wait, args.idle, args.idle_s)
                row = (quantile(lat, 0.5), quantile(lat, 0.9), ours, broker)
                rows[wait].append(row)
                print(
                    f"{trial:>5} {wait:>7} {row[0]:>15.1f} {row[1]:>15.1f} "
                    f"{row[2]:>16.3f} {row[3]:>18.3f}",
                    flush=True,
                )
    print(f"\nmedians over {args.trials} trials ({args.idle} idle readers)")
    for wait in waits:
        med = [statistics.median(r[i] for r in rows[wait]) for i in range(4)]
        print(f"{'':>5} {wait:>7} {med[0]:>15.1f} {med[1]:>15.1f} {med[2]:>16.3f} {med[3]:>18.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--waits", default="10,100", help="fetch_max_wait_ms values, comma-separated"
    )
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--records", type=int, default=40, help="records timed per trial")
    parser.add_argument("--gap-ms", type=int, default=50, help="between two timed records")
    parser.add_argument("--idle", type=int, default=8, help="idle readers")
    parser.add_argument(
        "--idle-s", type=float, default=5.0, help="seconds the idle cost is taken over"
    )
    configure("warning")
    asyncio.run(main(parser.parse_args()))
