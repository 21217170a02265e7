"""Transport benchmark: our delta pipeline against raw aiokafka, in one run, same broker.

(a) raw: aiokafka produces the very records our pipeline publishes for the delta (manifest
    and chunks, encoded before the clock starts), to one partition, while a consumer assigned
    to it reads them back; bytes only. ``--raw-source zeros`` sends one zero-filled record of
    the chunk records' size over and over instead (the baseline before 2026-12-02: its source
    stays in cache, which real payloads do not).
(b) ours: encode a 100 MB state dict (layout, hashes, chunking; ``--security`` adds signing
    and/or sealing), publish manifest and chunks, consume them with a PartitionReader, decode,
    verify every hash (and the signature), reassemble, view tensors.
(c) codecs: compress and decompress the same state dict in memory (bf16, int8, topk;
    ``schemas/compression.py``), MB/s of float32 input, next to the broker figures.
(d) model sizes: for each ``--presets`` model (its canonical weights, as a client sends
    them), seconds to move one update up and one broadcast down through (b), and raw (a)
    throughput for the same records.

Producer and consumer run concurrently, timed from the first byte encoded to the last record
consumed. Trials are paired and alternate their order (ours first in even trials, raw first in
odd ones); every pair is printed, and the median of the paired ratios reported. ``--warmup``
pairs (1 by default) run first and are printed but not counted: the first pair on a fresh
broker and process was the lowest of its run in 3 of 4 runs before it existed. Each trial's
topic is deleted after it, so the in-memory broker does not grow through the run.

    python benchmarks/transport.py [--megabytes 100] [--trials 7] [--warmup 1] [--chunk-kib 768]
        [--raw-source records|zeros] [--security none|sign|seal|both] [--presets tiny,20m,...]
    python benchmarks/transport.py --codecs-only [--megabytes 100] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from brokers.admin import ensure_topics
from brokers.deltas import DeltaReceiver, Received, publish_delta
from brokers.embedded import embedded_servers
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from schemas.codec import encode
from schemas.compression import compress, decompress
from schemas.delta import Reassembler, encode_delta
from schemas.messages import DeltaKind, Envelope
from schemas.sealing import Unsealer
from schemas.signing import verify_manifest

ENVELOPE = Envelope(run="bench", sender="client-0", federation="root")


def state_dict(megabytes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = megabytes * 1024 * 1024 // 4
    # A model-like mix: a few large matrices and many small tensors.
    sizes = [n // 4, n // 4, n // 8, n // 8] + [n // 4 // 64] * 63
    sizes.append(n - sum(sizes))
    return {f"layer.{i}.weight": torch.randn(s, generator=g) for i, s in enumerate(sizes)}


def preset_state(name: str) -> dict[str, torch.Tensor]:
    """The canonical weights of preset ``name`` (tied aliases once), as a client sends them."""
    from worldlm.training.model import PRESET_VOCAB_SIZE, ModelConfig, build_model
    from worldlm.training.workbench import canonical

    return canonical(build_model(ModelConfig.from_preset(name, vocab_size=PRESET_VOCAB_SIZE)))


@dataclass
class Security:
    """What ``--security`` turns on: the sender's keys and the reader's."""

    mode: str = "none"
    signer: Ed25519PrivateKey | None = None
    seal_to: dict[str, Any] | None = None
    unsealer: Unsealer | None = None
    keys: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, mode: str) -> Security:
        s = cls(mode)
        if mode in ("sign", "both"):
            s.signer = Ed25519PrivateKey.generate()
            s.keys = {ENVELOPE.sender: s.signer.public_key()}
        if mode in ("seal", "both"):
            key = X25519PrivateKey.generate()
            s.seal_to, s.unsealer = {"root": key.public_key()}, Unsealer("root", key)
        return s


def encode_records(state: dict[str, torch.Tensor], chunk_size: int) -> list[bytes]:
    """The records (b) publishes for ``state``, manifest first."""
    delta = encode_delta(
        state, envelope=ENVELOPE, kind="update", base_version=0, chunk_size=chunk_size
    )
    return [encode(m) for m in delta.messages()]


async def drop_topic(settings: KafkaSettings, topic: str) -> None:
    """Delete ``topic``: the embedded broker keeps records in memory until then."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def raw_trial(settings: KafkaSettings, topic: str, records: Sequence[bytes]) -> float:
    await ensure_topics(settings, [topic], partitions=1)
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
        while seen < len(records):
            batches = await consumer.getmany(tp, timeout_ms=100)
            seen += sum(len(b) for b in batches.values())

    start = time.perf_counter()
    reader = asyncio.create_task(consume())
    futures = [await producer.send(topic, r, key=b"root", partition=0) for r in records]
    await asyncio.gather(*futures)
    await reader
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await producer.stop()
    await drop_topic(settings, topic)
    return elapsed


async def pipeline_trial(
    settings: KafkaSettings,
    topic: str,
    state: dict[str, torch.Tensor],
    chunk_size: int,
    kind: DeltaKind = "update",
    security: Security | None = None,
    check: bool = True,
) -> float:
    sec = security or Security()
    await ensure_topics(settings, [topic], partitions=1)
    tp = TopicPartition(topic, 0)
    async with Producer(settings) as producer, PartitionReader(settings, {tp: 0}) as reader:
        receiver = DeltaReceiver(Reassembler(unsealer=sec.unsealer))

        async def consume() -> Received:
            while True:
                for record in await reader.fetch(100):
                    result = receiver.feed(record)
                    if isinstance(result, Received):
                        return result

        start = time.perf_counter()
        task = asyncio.create_task(consume())
        delta = encode_delta(
            state,
            envelope=ENVELOPE,
            kind=kind,
            base_version=0,
            chunk_size=chunk_size,
            signer=sec.signer,
            seal_to=sec.seal_to,
        )
        await publish_delta(producer, topic, "root", delta)
        received = await task
        if sec.signer is not None:  # as the participants do once a delta is whole
            verify_manifest(received.delta.manifest, sec.keys, received.delta.payload.data)
        tensors = received.delta.tensors()
        elapsed = time.perf_counter() - start
    await drop_topic(settings, topic)
    if check:
        assert all(torch.equal(tensors[k], v) for k, v in state.items()), "not bit-exact"
    return elapsed


def order_of(trial: int, ours: tuple[str, ...]) -> tuple[str, ...]:
    """Ours first in even trials, raw first (and ours reversed) in odd ones."""
    return (*ours, "raw") if trial % 2 == 0 else ("raw", *reversed(ours))


async def ratio(
    settings: KafkaSettings, state: dict[str, torch.Tensor], args: argparse.Namespace
) -> None:
    """(a) against (b): every pair, then the medians."""
    chunk_size, trials = args.chunk_kib * 1024, args.trials
    total = sum(t.numel() * t.element_size() for t in state.values())
    records = encode_records(state, chunk_size)
    if args.raw_source == "zeros":
        records = [records[0]] + [bytes(len(records[1]))] * (len(records) - 1)
    security = Security.of(args.security)
    raw_times, ours_times, ratios = [], [], []
    for trial in range(-args.warmup, trials):  # negative: warm-up pairs, printed, not counted
        got: dict[str, float] = {}
        order = order_of(trial, ("ours",))
        for which in order:
            if which == "ours":
                got[which] = await pipeline_trial(
                    settings, f"ours-{trial}", state, chunk_size, security=security
                )
            else:
                got[which] = await raw_trial(settings, f"raw-{trial}", records)
        pair = got["raw"] / got["ours"]
        name = f"warm-up {trial + args.warmup} (not counted)" if trial < 0 else f"trial {trial}"
        print(
            f"{name} ({'/'.join(order)}): raw {total / got['raw'] / 1e6:7.1f} MB/s   "
            f"ours {total / got['ours'] / 1e6:7.1f} MB/s   ratio {pair:.3f}",
            flush=True,
        )
        if trial < 0:
            continue
        ours_times.append(got["ours"])
        raw_times.append(got["raw"])
        ratios.append(pair)
    raw, ours = statistics.median(raw_times), statistics.median(ours_times)
    print(
        f"payload {total / 1e6:.1f} MB in {len(records) - 1} chunks of {args.chunk_kib} KiB "
        f"(records of {len(records[1])} bytes), raw source {args.raw_source}, security "
        f"{args.security}, {trials} paired trials, medians:"
    )
    print(f"(a) raw aiokafka produce->consume: {total / raw / 1e6:7.1f} MB/s")
    print(f"(b) WorldLM delta pipeline:        {total / ours / 1e6:7.1f} MB/s")
    print(f"ratio (b)/(a): median of the paired ratios {statistics.median(ratios):.3f}")


async def model_sizes(settings: KafkaSettings, args: argparse.Namespace) -> None:
    """(d): per preset, one update up and one broadcast down through (b), next to (a)."""
    chunk_size, trials = args.chunk_kib * 1024, args.trials
    rows = []
    for name in args.presets.split(","):
        state = preset_state(name)
        params = sum(t.numel() for t in state.values())
        total = sum(t.numel() * t.element_size() for t in state.values())
        records = encode_records(state, chunk_size)
        times: dict[str, list[float]] = {"up": [], "down": [], "raw": []}
        for trial in range(trials):
            order = order_of(trial, ("up", "down"))
            got: dict[str, float] = {}
            for which in order:
                topic = f"{name}-{which}-{trial}"
                if which == "raw":
                    got[which] = await raw_trial(settings, topic, records)
                else:
                    kind: DeltaKind = "update" if which == "up" else "broadcast"
                    got[which] = await pipeline_trial(
                        settings, topic, state, chunk_size, kind, check=trial == 0
                    )
                times[which].append(got[which])
            print(
                f"{name} trial {trial} ({'/'.join(order)}): up {got['up']:.3f} s   down "
                f"{got['down']:.3f} s   raw {got['raw']:.3f} s ({total / got['raw'] / 1e6:.1f} "
                f"MB/s)   up/raw {got['raw'] / got['up']:.3f}   down/raw "
                f"{got['raw'] / got['down']:.3f}",
                flush=True,
            )
        up_ratio = statistics.median(r / u for r, u in zip(times["raw"], times["up"], strict=True))
        dn = statistics.median(r / d for r, d in zip(times["raw"], times["down"], strict=True))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, params, total, len(records) - 1, med, up_ratio, dn))
        del state, records
    print(f"(d) model sizes, medians of {trials} trials, {args.chunk_kib} KiB chunks:")
    print(
        "| preset | parameters | delta MB | chunks | update up s | broadcast down s | "
        "raw s | raw MB/s | ours MB/s (up) | up/raw | down/raw |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, params, total, chunks, med, up_ratio, dn in rows:
        print(
            f"| {name} | {params / 1e6:.2f}M | {total / 1e6:.1f} | {chunks} | {med['up']:.3f} | "
            f"{med['down']:.3f} | {med['raw']:.3f} | {total / med['raw'] / 1e6:.1f} | "
            f"{total / med['up'] / 1e6:.1f} | {up_ratio:.3f} | {dn:.3f} |"
        )


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


async def main(args: argparse.Namespace) -> None:
    async with embedded_servers() as servers:
        settings = KafkaSettings(bootstrap=servers.kafka)
        # Warm-up: first connections and first topic creation are not what we measure.
        await pipeline_trial(settings, "warmup", state_dict(8), args.chunk_kib * 1024)
        if args.megabytes:
            state = state_dict(args.megabytes)
            await ratio(settings, state, args)
            codec_throughput(state, args.trials)
            del state
        if args.presets:
            await model_sizes(settings, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=int, default=100, help="0: skip (a)-(c)")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument(
        "--warmup", type=int, default=1, help="(a)/(b) pairs run first and not counted"
    )
    parser.add_argument("--chunk-kib", type=int, default=768)
    parser.add_argument("--raw-source", choices=("records", "zeros"), default="records")
    parser.add_argument("--security", choices=("none", "sign", "seal", "both"), default="none")
    parser.add_argument(
        "--presets", default="tiny,20m,75m,160m", help="(d) model presets; empty: skip (d)"
    )
    parser.add_argument("--codecs-only", action="store_true", help="only (c), no broker")
    args = parser.parse_args()
    if args.codecs_only:
        codec_throughput(state_dict(args.megabytes), args.trials)
    else:
        asyncio.run(main(args))
