"""Broker storage benchmark: the embedded broker on durable storage against memory storage.

Each trial starts a fresh embedded broker of each kind (``EmbeddedKafka()`` and
``EmbeddedKafka(storage=DIR)``, Tansu on ``s3://`` against ``brokers/s3server.py``; with
``--sync`` a third kind that also fsyncs every write) and runs the same two workloads on each:

- **chunks**: ``--megabytes`` of 768 KiB records (a delta's chunks) produced pipelined to one
  partition with acks=all, as participants publish them (``Producer.send_many``), then read
  back from offset 0 with a ``PartitionReader``: MB/s each way;
- **small**: ``--small`` records of 200 bytes (heartbeat-, metrics-sized), sent one at a time
  and waited for (latency-bound, like a report), then read back: records/s each way. The read
  also shows Tansu's fetch, which lists every stored batch of the partition on each request;

and reports **servers_rss_mb**, the broker's resident memory after both (plus the object
store's, for a durable broker).

Trials are paired and alternate their order (memory first in even trials); every trial is
printed, then the medians of each figure and of the paired ratios (durable / memory).

    python benchmarks/broker_storage.py [--trials 7] [--megabytes 32] [--small 200] [--sync]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka import TopicPartition

from brokers.admin import ensure_topics
from brokers.embedded import EmbeddedKafka
from brokers.kafka import KafkaSettings, PartitionReader, Producer

CHUNK = 768 * 1024
SMALL = 200
FIGURES = (
    "produce_mb_s",
    "consume_mb_s",
    "small_produce_rec_s",
    "small_consume_rec_s",
    "servers_rss_mb",
)


def rss_mb(pid: int | None) -> float:
    """Resident memory of process ``pid`` (0 when there is none)."""
    if pid is None:
        return 0.0
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


async def read_back(settings: KafkaSettings, topic: str, count: int) -> float:
    """Seconds to read ``count`` records of ``topic``'s partition 0 from offset 0."""
    start = time.perf_counter()
    seen = 0
    async with PartitionReader(settings, {TopicPartition(topic, 0): 0}) as reader:
        while seen < count:
            seen += len(await reader.fetch(timeout_ms=100))
    return time.perf_counter() - start


async def workloads(kafka: EmbeddedKafka, megabytes: int, small: int) -> dict[str, float]:
    settings = KafkaSettings(kafka.bootstrap, partitions=1)
    await ensure_topics(settings, ["chunks", "small"])
    payload = bytes(range(256)) * (CHUNK // 256)
    chunks = [payload] * max(1, megabytes * 1024 * 1024 // CHUNK)
    total_mb = len(chunks) * CHUNK / 1e6
    async with Producer(settings) as producer:
        start = time.perf_counter()
        await producer.send_many("chunks", chunks, partition=0)
        produce_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(small):
            await producer.send("small", i.to_bytes(4, "big") * (SMALL // 4), partition=0)
        small_produce_s = time.perf_counter() - start
    consume_s = await read_back(settings, "chunks", len(chunks))
    small_consume_s = await read_back(settings, "small", small)
    store = kafka.store.pid if kafka.store is not None else None
    return {
        "servers_rss_mb": rss_mb(kafka.pid) + rss_mb(store),
        "produce_mb_s": total_mb / produce_s,
        "consume_mb_s": total_mb / consume_s,
        "small_produce_rec_s": small / small_produce_s,
        "small_consume_rec_s": small / small_consume_s,
    }


async def one(kind: str, megabytes: int, small: int) -> dict[str, float]:
    """A fresh broker of ``kind`` (and a fresh directory), the workloads, then gone."""
    with tempfile.TemporaryDirectory(prefix="worldlm-bench-log-") as tmp:
        storage = None if kind == "memory" else Path(tmp)
        async with EmbeddedKafka(storage=storage, sync=kind == "durable+sync") as kafka:
            return await workloads(kafka, megabytes, small)


def line(kind: str, figures: dict[str, float]) -> str:
    return f"{kind:<20}" + "".join(f"{figures[f]:>22.1f}" for f in FIGURES)


async def main(args: argparse.Namespace) -> None:
    kinds = ["memory", "durable"] + (["durable+sync"] if args.sync else [])
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    print(f"{'trial/kind':<20}" + "".join(f"{f:>22}" for f in FIGURES))
    for trial in range(args.trials):
        order = kinds if trial % 2 == 0 else list(reversed(kinds))
        for kind in order:
            figures = await one(kind, args.megabytes, args.small)
            results[kind].append(figures)
            print(f"{trial}: " + line(kind, figures), flush=True)
    median: Callable[[list[float]], float] = statistics.median
    print(f"\nmedians over {args.trials} trials")
    for kind in kinds:
        print(line(kind, {f: median([r[f] for r in results[kind]]) for f in FIGURES}))
    for kind in kinds[1:]:
        ratios = {
            f: median([d[f] / m[f] for d, m in zip(results[kind], results["memory"], strict=True)])
            for f in FIGURES
        }
        print(f"{kind + '/memory':<20}" + "".join(f"{ratios[f]:>22.2f}" for f in FIGURES))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--megabytes", type=int, default=32)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--sync", action="store_true", help="also the fsync-every-write kind")
    asyncio.run(main(parser.parse_args()))
