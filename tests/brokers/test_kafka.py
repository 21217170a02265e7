"""Kafka adapter and chunked-delta transport against the real embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import msgspec
import pytest
import torch
from aiokafka import ConsumerRecord, TopicPartition

from brokers.admin import TopicMismatch, ensure_topics, topic_partitions
from brokers.deltas import DeltaReceiver, Received, Unreadable, publish_delta
from brokers.kafka import GroupConsumer, KafkaSettings, PartitionReader, Producer
from brokers.security import KafkaSecurity
from schemas.codec import encode
from schemas.delta import encode_delta
from schemas.messages import Envelope
from schemas.topics import Topics
from tests.waiting import until


def fifty_mb_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(4096, 2048, generator=g),  # 32 MiB fp32
        "block.0.w": torch.randn(2048, 2048, generator=g).to(torch.bfloat16),  # 8 MiB
        "block.1.w": torch.randn(2048, 2048, generator=g).to(torch.float16),  # 8 MiB
        "positions": torch.arange(2048 * 128, dtype=torch.int64),  # 2 MiB
        "norm.weight": torch.ones(2048),
        "mask": torch.rand(4096, generator=g) > 0.5,
    }


async def read_until(
    reader: PartitionReader, receiver: DeltaReceiver, n: int
) -> list[Received | Unreadable]:
    out: list[Received | Unreadable] = []
    async with asyncio.timeout(60):
        while sum(isinstance(x, Received) for x in out) < n:
            for record in await reader.fetch(timeout_ms=100):
                result = receiver.feed(record)
                if result is not None:
                    out.append(result)
    return out


async def test_fifty_mb_state_dict_round_trips_bit_exact(
    kafka: KafkaSettings, topics: Topics
) -> None:
    state = fifty_mb_state()
    assert sum(t.numel() * t.element_size() for t in state.values()) >= 50 * 1024 * 1024
    topic = topics.up("eu")
    await ensure_topics(kafka, [topic])
    env = Envelope(run=topics.run, sender="client-1", federation="eu")
    delta = encode_delta(state, envelope=env, kind="update", base_version=0, sample_count=5)
    async with Producer(kafka) as producer:
        published = await publish_delta(producer, topic, "eu", delta)
    assert published.records == delta.manifest.chunk_count + 1
    tp = TopicPartition(topic, published.partition)
    receiver = DeltaReceiver()
    async with PartitionReader(kafka, {tp: published.first_offset}) as reader:
        (got,) = await read_until(reader, receiver, 1)
    assert isinstance(got, Received)
    assert (got.first_offset, got.last_offset) == (published.first_offset, published.last_offset)
    tensors = got.delta.tensors()
    for name, t in state.items():
        assert tensors[name].dtype == t.dtype and tensors[name].shape == t.shape
        assert torch.equal(
            tensors[name].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)
        ), name


async def test_corrupt_record_on_topic_is_rejected_while_other_senders_arrive(
    kafka: KafkaSettings, topics: Topics
) -> None:
    topic = topics.up("root")
    await ensure_topics(kafka, [topic])
    deltas = {}
    for i, sender in enumerate(["a", "b", "c"]):
        env = Envelope(run=topics.run, sender=sender, federation="root")
        g = torch.Generator().manual_seed(i)
        deltas[sender] = encode_delta(
            {"w": torch.randn(300, 300, generator=g)},
            envelope=env,
            kind="update",
            base_version=1,
            chunk_size=64 * 1024,
        )
    bad = deltas["b"].chunks[0]
    flipped = bytes(b ^ 0xFF for b in bad.data)
    corrupt = encode(msgspec.structs.replace(bad, data=memoryview(flipped)))
    async with Producer(kafka) as producer:
        # interleave the three senders chunk by chunk, then a corrupt copy and garbage
        streams = [[encode(m) for m in d.messages()] for d in deltas.values()]
        interleaved = [v for row in zip(*streams, strict=False) for v in row]
        interleaved += [v for s in streams for v in s[len(min(streams, key=len)) :]]
        await producer.send_many(topic, [corrupt, b"\x00garbage", *interleaved], key="root")
        partition = (await producer.send(topic, b"\xc1", key="root")).partition
    receiver = DeltaReceiver()
    async with PartitionReader(kafka, {TopicPartition(topic, partition): 0}) as reader:
        results = await read_until(reader, receiver, 3)
    received = {r.delta.sender for r in results if isinstance(r, Received)}
    assert received == {"a", "b", "c"}
    assert receiver.rejected["chunk_corrupt"] == 1
    assert receiver.rejected["malformed"] >= 1
    assert receiver.reassembler.counters.chunks_rejected == 1


async def test_reader_starts_from_explicit_offset(kafka: KafkaSettings, topics: Topics) -> None:
    topic = topics.down("root")
    await ensure_topics(kafka, [topic])
    async with Producer(kafka) as producer:
        meta = await producer.send_many(topic, [f"m{i}".encode() for i in range(10)], key="root")
    tp = TopicPartition(topic, meta[0].partition)
    async with PartitionReader(kafka, {tp: meta[6].offset}) as reader:
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < 4:
                values += [r.value for r in await reader.fetch(100)]
    assert values == [b"m6", b"m7", b"m8", b"m9"]


async def test_reader_reads_a_hole_again_instead_of_skipping_it(
    kafka: KafkaSettings, topics: Topics
) -> None:
    """A fetch that jumps over an offset (a record not yet visible when its successors were)
    must not lose that record: the reader stops before the hole and reads from it again."""
    topic = topics.up("a")
    await ensure_topics(kafka, [topic])
    async with Producer(kafka) as producer:
        meta = await producer.send_many(topic, [f"r{i}".encode() for i in range(10)], key="a")
    tp = TopicPartition(topic, meta[0].partition)
    async with PartitionReader(kafka, {tp: 0}) as reader:
        fetched: list[ConsumerRecord] = []
        async with asyncio.timeout(30):
            while len(fetched) < 10:
                fetched += await reader.fetch(100)
        # Replay what a fetch with a hole at offset 4 would have delivered.
        reader.seek(tp, 0)
        holed = [r for r in fetched if r.offset != 4]
        before = reader._contiguous(tp, holed)
        assert [r.value for r in before] == [b"r0", b"r1", b"r2", b"r3"]
        assert await reader.position(tp) == 4
        assert reader.gaps == 1
        rest: list[bytes] = []
        async with asyncio.timeout(30):
            while len(rest) < 6:
                rest += [r.value for r in await reader.fetch(100)]
    assert rest == [f"r{i}".encode() for i in range(4, 10)]
    assert reader.gaps == 1 and reader.gaps_skipped == 0


async def test_reader_accepts_a_hole_that_stays_after_the_wait(
    kafka: KafkaSettings, topics: Topics
) -> None:
    """Compacted topics and transaction markers leave real holes: after ``gap_wait_s`` the
    reader goes on past them (counted) rather than stalling."""
    topic = topics.up("a")
    await ensure_topics(kafka, [topic])
    async with Producer(kafka) as producer:
        meta = await producer.send_many(topic, [f"r{i}".encode() for i in range(6)], key="a")
    tp = TopicPartition(topic, meta[0].partition)
    async with PartitionReader(kafka, {tp: 0}, gap_wait_s=0.0) as reader:
        fetched: list[ConsumerRecord] = []
        async with asyncio.timeout(30):
            while len(fetched) < 6:
                fetched += await reader.fetch(100)
        reader.seek(tp, 0)
        kept = reader._contiguous(tp, [r for r in fetched if r.offset != 2])
    assert [r.offset for r in kept] == [0, 1, 3, 4, 5]
    assert reader.gaps == 1 and reader.gaps_skipped == 1


def looked(reader: PartitionReader, times: int) -> Callable[[], bool]:
    """Whether ``reader`` has looked for its missing topics ``times`` times."""
    return lambda: reader.looks >= times


async def follow(
    reader: PartitionReader, seen: list[ConsumerRecord], n: int, done: asyncio.Event
) -> None:
    """Fetch into ``seen`` for ever; set ``done`` once ``n`` records came."""
    while True:
        seen.extend(await reader.fetch(timeout_ms=50))
        if len(seen) >= n:
            done.set()


async def test_a_reader_started_before_its_topic_exists_creates_nothing_and_reads_every_record(
    kafka: KafkaSettings, topics: Topics
) -> None:
    """A reader may start before the run makes its topics (a watcher, a dashboard, a client of
    an operator-made run). It must not make them: a broker that auto-creates (Tansu; Apache
    Kafka by default) makes a topic whose metadata is asked for with *its* default partition
    count, and records keyed over that count land on partitions a reader keyed over the run's
    count never reads (1 run in 3 of test_redis_restart). Repeated, the topic appearing at
    different moments of the reader's polling."""
    keys = ["root", "en-0", "de-0", "eu", "asia"]  # over 4 partitions, "root" is partition 2
    for attempt in range(3):
        topic = f"{topics.base}.late{attempt}"
        tps = [TopicPartition(topic, p) for p in range(kafka.partitions)]
        seen: list[ConsumerRecord] = []
        read_all = asyncio.Event()
        async with PartitionReader(kafka, dict.fromkeys(tps, 0)) as reader:
            following = asyncio.create_task(follow(reader, seen, 3 * len(keys), read_all))
            try:
                # the topic appears after the reader looked for it in vain once, twice, thrice
                await until(looked(reader, attempt + 1), what=f"{attempt + 1} looks")
                assert topic not in await topic_partitions(kafka)  # the reader made nothing
                assert reader.waiting == set(tps) and reader.highwater(tps[0]) is None
                assert await reader.position(tps[0]) == 0
                await ensure_topics(kafka, [topic])
                async with Producer(kafka) as producer:
                    for key in keys:
                        values = [f"{key}:{i}".encode() for i in range(3)]
                        await producer.send_many(topic, values, key=key)
                async with asyncio.timeout(30):
                    await read_all.wait()
            finally:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
        assert (await topic_partitions(kafka))[topic] == kafka.partitions
        assert not reader.waiting
        assert sorted(r.value for r in seen) == sorted(
            f"{key}:{i}".encode() for key in keys for i in range(3)
        )
        for tp in tps:  # each partition read from offset 0, in order, once
            offsets = [r.offset for r in seen if r.partition == tp.partition]
            assert offsets == list(range(len(offsets)))


async def test_ensure_topics_refuses_a_topic_that_exists_with_another_partition_count(
    kafka: KafkaSettings, topics: Topics
) -> None:
    """A topic made before the run with the broker's default count (as an auto-creating
    broker makes one a client asked about) would split producers from readers: refused."""
    await ensure_topics(kafka, [topics.metrics], partitions=4)
    await ensure_topics(kafka, [topics.metrics], partitions=4)  # the same count: fine
    with pytest.raises(TopicMismatch, match=r"other partition counts than 2"):
        await ensure_topics(kafka, [topics.metrics, topics.events])
    found = await topic_partitions(kafka)
    assert found[topics.metrics] == 4 and found[topics.events] == kafka.partitions == 2


async def test_group_consumer_resumes_from_last_manual_commit(
    kafka: KafkaSettings, topics: Topics
) -> None:
    topic = topics.up("agg")
    await ensure_topics(kafka, [topic], partitions=1)
    async with Producer(kafka) as producer:
        await producer.send_many(topic, [f"u{i}".encode() for i in range(6)], partition=0)
    group = f"{topics.run}-agg"
    tp = TopicPartition(topic, 0)

    async def consume(n: int) -> list[bytes]:
        got: list[bytes] = []
        async with asyncio.timeout(60):
            while len(got) < n:
                got += [r.value for r in await consumer.fetch(200)]
        return got

    async with GroupConsumer(kafka, group, [topic]) as consumer:
        first = await consume(6)
        await consumer.commit({tp: 3})  # only the first three were "processed"
    async with GroupConsumer(kafka, group, [topic]) as consumer:
        again = await consume(3)
        assert await consumer.committed(tp) == 3
    assert first == [f"u{i}".encode() for i in range(6)]
    assert again[:3] == [b"u3", b"u4", b"u5"]


async def test_stop_is_idempotent(kafka: KafkaSettings) -> None:
    producer = Producer(kafka)
    await producer.start()
    await producer.stop()
    await producer.stop()


async def test_producer_and_readers_hand_the_security_settings_to_aiokafka() -> None:
    security = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-256", "slavic", "pw")
    settings = KafkaSettings(bootstrap="127.0.0.1:1", security=security)
    producer, reader = Producer(settings), PartitionReader(settings, {})
    for client in (producer._producer.client, reader._consumer._client):
        assert client._security_protocol == "SASL_PLAINTEXT"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert client._sasl_plain_username == "slavic"
    await producer._producer.stop()
    await reader._consumer.stop()


async def test_plaintext_from_the_environment_reaches_the_embedded_broker(
    kafka: KafkaSettings, topics: Topics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLDLM_KAFKA_SECURITY_PROTOCOL", "plaintext")
    settings = KafkaSettings(bootstrap=kafka.bootstrap, partitions=1)
    assert settings.security.protocol == "PLAINTEXT"
    topic = topics.events
    await ensure_topics(settings, [topic])
    async with Producer(settings) as producer:
        sent = await producer.send(topic, b"over plain kafka", partition=0)
    async with PartitionReader(settings, {TopicPartition(topic, 0): sent.offset}) as reader:
        async with asyncio.timeout(30):
            got: list[bytes] = []
            while not got:
                got = [r.value for r in await reader.fetch(100)]
    assert got == [b"over plain kafka"]
