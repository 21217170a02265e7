"""A smoke transfer through the data plane: a model delta over Kafka, control state in Redis.

It exercises what every participant relies on (chunked publish, explicit-offset read,
verified reassembly, the model pointer, a round barrier and the residual cache) and reports
throughput. ``worldlm infra smoke`` runs it against any Kafka and Redis.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import torch
from aiokafka import TopicPartition

from brokers.admin import ensure_topics
from brokers.deltas import DeltaReceiver, Received, publish_delta
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from brokers.state import RedisState
from schemas.delta import encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope
from schemas.topics import Topics


@dataclass(frozen=True)
class SmokeReport:
    run: str
    megabytes: float
    chunks: int
    seconds: float
    bit_exact: bool
    barrier_closed: bool
    residual_round: int

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.seconds else 0.0


async def smoke_transfer(kafka: str, redis: str, *, megabytes: float = 16.0) -> SmokeReport:
    """Send a ``megabytes``-sized delta from a client to its federation and verify it."""
    run = f"smoke-{uuid.uuid4().hex[:8]}"
    topics, settings = Topics(run), KafkaSettings(bootstrap=kafka)
    await ensure_topics(settings, [*topics.data_plane(["root"]), *topics.run_wide()])
    g = torch.Generator().manual_seed(0)
    n = int(megabytes * 1024 * 1024 / 4)
    delta = {
        "backbone.weight": torch.randn(n // 2, generator=g),
        "key.weight": torch.randn(n - n // 2, generator=g),
    }
    encoded = encode_delta(
        delta,
        envelope=Envelope(run=run, sender="client-0", federation="root"),
        kind="update",
        base_version=0,
        sample_count=1,
    )
    async with (
        RedisState(redis, Keyspace(run), ttl_s=3600) as state,
        Producer(settings) as producer,
    ):
        await state.heartbeat("root", "client-0", ttl_s=30)
        start = time.perf_counter()
        published = await publish_delta(producer, topics.up("root"), "root", encoded)
        tp = TopicPartition(topics.up("root"), published.partition)
        receiver = DeltaReceiver()
        received: Received | None = None
        async with PartitionReader(settings, {tp: published.first_offset}) as reader:
            while received is None:
                for record in await reader.fetch(100):
                    result = receiver.feed(record)
                    if isinstance(result, Received):
                        received = result
        seconds = time.perf_counter() - start
        got = received.delta.tensors()
        exact = all(torch.equal(got[k], v) for k, v in delta.items())
        arrival = await state.arrive("root", 0, "client-0", quorum=1)
        closed = await state.close_round("root", 0, "quorum", "smoke")
        await state.set_model_version(
            "root",
            1,
            topic=topics.down("root"),
            partition=published.partition,
            offset=published.first_offset,
        )
        await state.residuals.put("root", 0, {"key.weight": got["key.weight"]})
        residual = await state.residuals.get("root")
    return SmokeReport(
        run=run,
        megabytes=encoded.manifest.total_bytes / 1e6,
        chunks=encoded.manifest.chunk_count,
        seconds=seconds,
        bit_exact=exact,
        barrier_closed=arrival.accepted and closed,
        residual_round=residual.round if residual else -1,
    )
