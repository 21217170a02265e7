"""Topic administration: create a run's topics, read which topics and partitions exist.

Plain Kafka admin and metadata requests, so they work on Apache Kafka as on the embedded broker.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from brokers.kafka import KafkaSettings

log = structlog.get_logger(__name__)

_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    partitions: int | None = None,
    *,
    retention_ms: int | None = None,
) -> None:
    """Create topics that do not exist yet; existing ones are left as they are.

    ``retention_ms``: how long the new topics keep records (their ``retention.ms``; -1: for
    ever; None: the broker's default), whatever the broker's default is.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
        **settings.security.client_kwargs(),
    )
    await admin.start()
    try:
        configs = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
        new = [
            NewTopic(n, partitions or settings.partitions, 1, topic_configs=configs) for n in names
        ]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return
        for topic, code, message in getattr(response, "topic_errors", []):
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {topic}: error {code} {message}")
        log.debug("topics_ensured", topics=names)
    finally:
        await admin.close()


async def topic_partitions(settings: KafkaSettings) -> dict[str, int]:
    """Every topic of the cluster and its partition count (a metadata read; creates nothing)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=f"{settings.client_id}-metadata",
        request_timeout_ms=settings.request_timeout_ms,
        **settings.security.client_kwargs(),
    )
    await consumer.start()
    try:
        names = await consumer.topics()
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in names}
    finally:
        await consumer.stop()
