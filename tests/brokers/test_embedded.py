"""The embedded servers start on free ports, answer, and stop cleanly."""

from __future__ import annotations

import socket

import pytest
import redis.asyncio as aioredis

from brokers.admin import ensure_topics
from brokers.embedded import EmbeddedKafka, EmbeddedRedis, ServerError
from brokers.kafka import KafkaSettings
from brokers.security import KafkaSecurityError


async def test_embedded_redis_answers_and_stops() -> None:
    async with EmbeddedRedis() as server:
        client = aioredis.Redis.from_url(server.url)
        assert await client.ping()
        await client.aclose()
        assert server.running
    assert not server.running
    await server.stop()  # idempotent


async def test_embedded_kafka_creates_topics_and_stops_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with EmbeddedKafka() as server:
            await ensure_topics(KafkaSettings(server.bootstrap), ["a.b", "a.c"])
            await ensure_topics(KafkaSettings(server.bootstrap), ["a.b"])  # exists: no error
            assert server.running
            raise RuntimeError("boom")
    assert not server.running


async def test_server_whose_port_is_taken_raises_clear_error() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ServerError, match="redis exited"):
            async with EmbeddedRedis(port=port, startup_timeout_s=10):
                pass


async def test_embedded_broker_refuses_to_start_under_real_cluster_security_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SASL/TLS setting meant for a production cluster must not be silently ignored."""
    monkeypatch.setenv("WORLDLM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("WORLDLM_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("WORLDLM_KAFKA_USERNAME", "u")
    monkeypatch.setenv("WORLDLM_KAFKA_PASSWORD", "p")
    kafka = EmbeddedKafka()
    with pytest.raises(KafkaSecurityError, match="speaks PLAINTEXT"):
        await kafka.start()
    assert kafka._proc is None  # nothing was started
