"""Transport benchmark: our delta pipeline against raw aiokafka, in one run, same broker.

(a) raw: aiokafka produces N records of the same size our chunk records have, to one
    partition, while a consumer assigned to it reads them back; bytes only.
(b) ours: encode a 100 MB state dict (layout, hashes, chunking), publish manifest and chunks,
    consume them with a PartitionReader, decode, verify every hash, reassemble, view tensors.

(c) codecs: compress and decompress the same state dict in memory (bf16, int8, topk;
    ``schemas/compression.py``), MB/s of float32 input, next to the broker figures.

Both run producer and consumer concurrently and are timed from the first byte encoded to the
last record consumed. Trials are paired and alternate their order ((b) first in even trials,
(a) first in odd ones); every pair is printed, and the median of the paired ratios reported.

    python benchmarks/transport.py [--megabytes 100] [--trials 7] [--chunk-kib 768]
    python benchmarks/transport.py --codecs-only [--megabytes 100] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from brokers.admin import ensure_topics
from brokers.deltas import DeltaReceiver, Received, publish_delta
from brokers.embedded import embedded_servers
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from schemas.codec import encode
from schemas.compression import compress, decompress
from schemas.delta import encode_delta
from schemas.messages import Envelope


def state_dict(megabytes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = megabytes * 1024 * 1024 // 4
    # A model-like mix: a few large matrices and many small tensors.
    sizes = [n // 4, n // 4, n // 8, n // 8] + [n // 4 // 64] * 63
    sizes.append(n - sum(sizes))
    return {f"layer.{i}.weight": torch.randn(s, generator=g) for i, s in enumerate(sizes)}


async def raw_trial(settings: KafkaSettings, topic: str, record_size: int, count: int) -> float:
    await ensure_topics(settings, [topic], partitions=1)
    payload = bytes(record_size)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        enable_idempotence=False,
        max_request_size=settings.max_request_size,
        linger_ms=0,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
        fetch_max_bytes=settings.fetch_max_bytes,
    )
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)

    async def consume() -> None:
        seen = 0
        while seen < count:
            batches = await consumer.getmany(tp, timeout_ms=100)
            seen += sum(len(b) for b in batches.values())

    start = time.perf_counter()
    reader = asyncio.create_task(consume())
    futures = [await producer.send(topic, payload, key=b"root", partition=0) for _ in range(count)]
    await asyncio.gather(*futures)
    await reader
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await producer.stop()
    return elapsed


async def pipeline_trial(
    settings: KafkaSettings, topic: str, state: dict[str, torch.Tensor], chunk_size: int
) -> tuple[float, int, int]:
    await ensure_topics(settings, [topic], partitions=1)
    tp = TopicPartition(topic, 0)
    env = Envelope(run="bench", sender="client-0", federation="root")
    async with Producer(settings) as producer, PartitionReader(settings, {tp: 0}) as reader:
        receiver = DeltaReceiver()

        async def consume() -> Received:
            while True:
                for record in await reader.fetch(100):
                    result = receiver.feed(record)
                    if isinstance(result, Received):
                        return result

        start = time.perf_counter()
        task = asyncio.create_task(consume())
        delta = encode_delta(
            state, envelope=env, kind="update", base_version=0, chunk_size=chunk_size
        )
        await publish_delta(producer, topic, "root", delta)
        received = await task
        tensors = received.delta.tensors()
        elapsed = time.perf_counter() - start
    assert all(torch.equal(tensors[k], v) for k, v in state.items()), "not bit-exact"
    record_size = len(encode(delta.chunks[0]))
    return elapsed, record_size, delta.manifest.chunk_count


#: (label, codec, parameters) of the codecs timed.
CODECS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("bf16", "bf16", {}),
    ("int8, block 256", "int8", {"block": 256}),
    ("topk 10%", "topk", {"fraction": 0.1}),
)


def codec_throughput(state: dict[str, torch.Tensor], trials: int) -> None:
    """(c): best-of-``trials`` encode + decode MB/s of float32 input for each codec, on one
    torch thread (a per-core figure)."""
    torch.set_num_threads(1)
    total = sum(t.numel() * t.element_size() for t in state.values())
    print(f"(c) codecs on {total / 1e6:.1f} MB of float32, best of {trials}:")
    for label, codec, params in CODECS:
        encode_s, decode_s = [], []
        for _ in range(trials):
            started = time.perf_counter()
            wire, codecs = compress(state, codec, **params)
            encoded = time.perf_counter()
            decompress(wire, codecs)
            encode_s.append(encoded - started)
            decode_s.append(time.perf_counter() - encoded)
        e, d = min(encode_s), min(decode_s)
        print(
            f"    {label:>16}: encode {total / e / 1e6:7.1f} MB/s   decode "
            f"{total / d / 1e6:7.1f} MB/s   both {total / (e + d) / 1e6:7.1f} MB/s",
            flush=True,
        )


async def main(megabytes: int, trials: int, chunk_size: int) -> None:
    state = state_dict(megabytes)
    total = sum(t.numel() * t.element_size() for t in state.values())
    async with embedded_servers() as servers:
        settings = KafkaSettings(bootstrap=servers.kafka)
        # Warm-up: first connections and first topic creation are not what we measure.
        await pipeline_trial(settings, "warmup", state_dict(8), chunk_size)
        raw_times, ours_times, ratios = [], [], []
        # The raw trial sends records of our chunk records' size: learn the layout locally.
        layout = encode_delta(
            state,
            envelope=Envelope(run="bench", sender="client-0", federation="root"),
            kind="update",
            base_version=0,
            chunk_size=chunk_size,
        )
        record_size, chunks = len(encode(layout.chunks[0])), layout.manifest.chunk_count
        for trial in range(trials):
            # Paired trials, order alternated: ours first in even trials, raw first in odd.
            order = ("ours", "raw") if trial % 2 == 0 else ("raw", "ours")
            got: dict[str, float] = {}
            for which in order:
                if which == "ours":
                    got["ours"], _, _ = await pipeline_trial(
                        settings, f"ours-{trial}", state, chunk_size
                    )
                else:
                    got["raw"] = await raw_trial(settings, f"raw-{trial}", record_size, chunks + 1)
            ours_times.append(got["ours"])
            raw_times.append(got["raw"])
            ratios.append(got["raw"] / got["ours"])
            print(
                f"trial {trial} ({'/'.join(order)}): raw {total / got['raw'] / 1e6:7.1f} MB/s   "
                f"ours {total / got['ours'] / 1e6:7.1f} MB/s   ratio {ratios[-1]:.3f}",
                flush=True,
            )
    raw, ours = statistics.median(raw_times), statistics.median(ours_times)
    print(
        f"payload {total / 1e6:.1f} MB in {chunks} chunks of {chunk_size // 1024} KiB "
        f"(records of {record_size} bytes), {trials} paired trials, medians:"
    )
    print(f"(a) raw aiokafka produce->consume: {total / raw / 1e6:7.1f} MB/s")
    print(f"(b) WorldLM delta pipeline:        {total / ours / 1e6:7.1f} MB/s")
    print(f"ratio (b)/(a): median of the paired ratios {statistics.median(ratios):.3f}")
    codec_throughput(state, trials)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--chunk-kib", type=int, default=768)
    parser.add_argument("--codecs-only", action="store_true", help="only (c), no broker")
    args = parser.parse_args()
    if args.codecs_only:
        codec_throughput(state_dict(args.megabytes), args.trials)
    else:
        asyncio.run(main(args.megabytes, args.trials, args.chunk_kib * 1024))
