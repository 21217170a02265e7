"""Clients shared by a process's participants: one producer and one Redis pool per server."""

from __future__ import annotations

import asyncio

from brokers.admin import ensure_topics
from brokers.embedded import Servers
from brokers.kafka import KafkaSettings, Producer, producers
from brokers.shared import REDIS_POOL_SIZE, Shared, redis_pools
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from schemas.topics import Topics


async def test_a_shared_client_opens_at_the_first_user_and_closes_after_the_last() -> None:
    log: list[str] = []

    async def open(key: object) -> str:
        await asyncio.sleep(0.01)  # users arriving meanwhile wait for the same client
        log.append(f"open {key}")
        return f"client {key}"

    async def close(client: str) -> None:
        log.append(f"close {client}")

    shared: Shared[str] = Shared(open, close)
    clients = await asyncio.gather(*(shared.acquire("a") for _ in range(5)))
    assert set(clients) == {"client a"} and shared.users("a") == 5
    for _ in range(4):
        await shared.release("a")
    assert log == ["open a"]
    await shared.release("a")
    assert log == ["open a", "close client a"] and shared.users("a") == 0
    assert await shared.acquire("a") == "client a"  # a later user opens a new one
    assert shared.opened == 2


async def test_producers_of_one_process_share_one_client_but_count_their_own_sends(
    kafka: KafkaSettings, topics: Topics
) -> None:
    await ensure_topics(kafka, [topics.events])
    opened = producers.opened
    nodes = [
        Producer(KafkaSettings(kafka.bootstrap, client_id=f"n{i}"), shared=True) for i in range(5)
    ]
    for p in nodes:
        await p.start()
    assert producers.opened == opened + 1
    assert len({id(p._client) for p in nodes}) == 1
    await nodes[0].send(topics.events, b"x" * 10, key="a")
    await nodes[1].send_many(topics.events, [b"y" * 3, b"z"], key="b")
    assert [(p.records_sent, p.bytes_sent) for p in nodes[:3]] == [(1, 10), (2, 4), (0, 0)]
    for p in nodes[:4]:
        await p.stop()
    await nodes[4].send(topics.events, b"still open", key="c")  # the last user still sends
    await nodes[4].stop()
    await nodes[4].stop()  # idempotent: released once
    assert producers.users(nodes[4]._key) == 0


async def test_redis_states_of_one_process_share_one_bounded_pool(
    servers: Servers, run_id: str
) -> None:
    states = [RedisState(servers.redis, Keyspace(run_id), shared=True) for _ in range(20)]
    for s in states:
        await s.start()
    assert len({id(s.redis) for s in states}) == 1
    # Many concurrent commands are served by at most REDIS_POOL_SIZE connections.
    await asyncio.gather(*(s.heartbeat("fed", f"m{i}", ttl_s=5) for i, s in enumerate(states)))
    pool = states[0].redis.connection_pool
    assert pool.max_connections == REDIS_POOL_SIZE
    assert len((await states[0].roster("fed")).live) == 20
    for s in states:
        await s.stop()
    assert redis_pools.users((servers.redis, 8)) == 0
