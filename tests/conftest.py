"""Session-wide fixtures: the real embedded Kafka (Tansu) and Redis servers, started once.

Every test gets its own run id, so its topics and Redis keys never meet another test's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from brokers.embedded import EmbeddedKafka, EmbeddedRedis, Servers
from brokers.kafka import KafkaSettings
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from schemas.topics import Topics


@pytest.fixture(scope="session")
async def servers() -> AsyncIterator[Servers]:
    """Tansu and redis-server on free loopback ports, for the whole session."""
    async with EmbeddedKafka() as kafka, EmbeddedRedis() as redis:
        yield Servers(kafka=kafka.bootstrap, redis=redis.url)


@pytest.fixture
def run_id() -> str:
    """A unique namespace for one test's topics and keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topics(run_id: str) -> Topics:
    return Topics(run_id)


@pytest.fixture
def kafka(servers: Servers) -> KafkaSettings:
    return KafkaSettings(bootstrap=servers.kafka, partitions=2)


@pytest.fixture
async def state(servers: Servers, run_id: str) -> AsyncIterator[RedisState]:
    async with RedisState(
        servers.redis, Keyspace(run_id), ttl_s=600, max_value_bytes=64 * 1024
    ) as st:
        yield st
