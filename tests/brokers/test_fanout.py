"""One shared reader per partition: every subscriber gets every record from its own offset."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from brokers.admin import ensure_topics
from brokers.fanout import Subscription, fanouts
from brokers.kafka import KafkaSettings, Producer
from schemas.topics import Topics
from tests.waiting import until


async def collect(subscription: Subscription, n: int) -> list[int]:
    offsets: list[int] = []
    async with asyncio.timeout(30):
        while len(offsets) < n:
            offsets += [r.offset for r in await subscription.fetch()]
    return offsets


async def test_subscribers_share_one_reader_and_each_gets_every_record_from_its_offset(
    kafka: KafkaSettings, topics: Topics
) -> None:
    topic = topics.events
    await ensure_topics(kafka, [topic])
    tp = TopicPartition(topic, 0)
    readers = fanouts.readers()
    async with Producer(kafka) as producer:
        await producer.send_many(topic, [b"%d" % i for i in range(10)], partition=0)
        first = await fanouts.subscribe(kafka, tp, 5)
        assert await collect(first, 5) == [5, 6, 7, 8, 9]
        # A later subscriber from an earlier offset: the reader goes back for it alone.
        second = await fanouts.subscribe(kafka, tp, 2)
        assert fanouts.readers() == readers + 1
        await producer.send_many(topic, [b"%d" % i for i in range(10, 13)], partition=0)
        assert await collect(second, 11) == list(range(2, 13))
        assert await collect(first, 3) == [10, 11, 12]  # nothing twice
        # A waiter wakes on a record as it comes, with no timeout to run out.
        fetched = first.fanout.fetches
        waiting = asyncio.ensure_future(first.fetch())
        await until(lambda: first.fanout.fetches >= fetched + 3, what="three empty fetches")
        assert not waiting.done()  # the reader found nothing, three times: no wake-up
        await producer.send(topic, b"13", partition=0)
        async with asyncio.timeout(10):
            assert [r.value for r in await waiting] == [b"13"]
        await first.close()
        await second.close()
    assert fanouts.readers() == readers


async def test_idle_wakes_a_waiter_that_asked_and_the_subscription_is_caught_up(
    kafka: KafkaSettings, topics: Topics
) -> None:
    topic = topics.metrics
    await ensure_topics(kafka, [topic])
    async with Producer(kafka) as producer:
        await producer.send(topic, b"only", partition=1)
        subscription = await fanouts.subscribe(kafka, TopicPartition(topic, 1), 0)
        assert len(await collect(subscription, 1)) == 1
        async with asyncio.timeout(10):
            assert await subscription.fetch(idle=True) == []
        assert subscription.caught_up
        assert await subscription.fetch(0.05) == []  # a timeout, nothing came
        await subscription.close()
