"""Clients one process shares among its participants, counted by their users.

A whole hierarchy in one process (``worldlm run``) would otherwise open, per participant, a
Kafka producer with its connections and a Redis connection pool; shared, a process holds one of
each per server (and per set of credentials: a run with ``isolation = "acl"`` gives every
participant its own Redis user, hence its own pool). The first user opens a client, the last
one's release closes it. aiokafka and redis.asyncio clients belong to the event loop that made
them, so clients are shared within one running loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    value: T | None = None
    users: int = 0


class Shared(Generic[T]):
    """Reference-counted clients keyed by what makes two of them interchangeable."""

    def __init__(
        self,
        open: Callable[[Hashable], Awaitable[T]],
        close: Callable[[T], Awaitable[None]],
    ) -> None:
        self._open = open
        self._close = close
        self._entries: dict[tuple[int, Hashable], _Entry[T]] = {}
        self.opened = 0  # clients opened in this process so far (tests assert on it)

    def _entry(self, key: Hashable) -> _Entry[T]:
        return self._entries.setdefault((id(asyncio.get_running_loop()), key), _Entry())

    async def acquire(self, key: Hashable) -> T:
        """The client for ``key``, opened if this is its first user."""
        entry = self._entry(key)
        async with entry.lock:
            if entry.value is None:
                entry.value = await self._open(key)
                self.opened += 1
            entry.users += 1
            return entry.value

    async def release(self, key: Hashable) -> None:
        """One user less; the last one closes the client (even if closing fails)."""
        entry = self._entry(key)
        async with entry.lock:
            entry.users -= 1
            if entry.users > 0 or entry.value is None:
                return
            value, entry.value = entry.value, None  # the entry stays: a waiter may hold it
            await self._close(value)

    def users(self, key: Hashable) -> int:
        """How many users the client for ``key`` has in this loop now."""
        entry = self._entries.get((id(asyncio.get_running_loop()), key))
        return entry.users if entry is not None else 0


#: Most connections a shared Redis pool opens; more concurrent commands wait for one.
REDIS_POOL_SIZE = 16


async def open_redis(url: str, retries: int, max_connections: int | None = None) -> aioredis.Redis:
    """A Redis client for ``url`` whose transient failures (a restarted server, a dropped
    connection) are retried with jittered exponential backoff, bounded: ~``retries`` tries
    within ~5 s, then the error surfaces; scripts a restarted server lost are re-loaded by
    redis-py. ``max_connections`` bounds its pool (commands beyond wait for a connection)."""
    options: dict[str, Any] = {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
        "retry_on_error": [ConnectionError, TimeoutError, BusyLoadingError],
        "socket_connect_timeout": 2.0,
        "health_check_interval": 10,
    }
    if max_connections is None:
        client = aioredis.Redis.from_url(url, **options)
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=30, **options
        )
        client = aioredis.Redis.from_pool(pool)
    await client.ping()
    return client


async def _open_shared_redis(key: Hashable) -> aioredis.Redis:
    url, retries = cast(tuple[str, int], key)
    return await open_redis(url, retries, REDIS_POOL_SIZE)


#: The process's shared Redis clients (connection pools), one per URL (credentials included).
redis_pools: Shared[aioredis.Redis] = Shared(_open_shared_redis, lambda r: r.aclose())
