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


class TopicMismatch(RuntimeError):
    """A topic exists with another partition count than asked for: producers (who key over
    the actual count) and readers (who key over the configured one) would use different
    partitions."""


async def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    partitions: int | None = None,
    *,
    retention_ms: int | None = None,
) -> None:
    """Create topics that do not exist yet; existing ones are left as they are, but must have
    the partition count asked for (else :class:`TopicMismatch`: a topic made before the run,
    e.g. by a broker that auto-creates one a client merely asked about, with its default).

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
    want = partitions or settings.partitions
    await admin.start()
    try:
        configs = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
        new = [NewTopic(n, want, 1, topic_configs=configs) for n in names]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            existed = names
        else:
            existed = []
            for topic, code, message in getattr(response, "topic_errors", []):
                if code == _TOPIC_ALREADY_EXISTS:
                    existed.append(topic)
                elif code != 0:
                    raise RuntimeError(f"cannot create topic {topic}: error {code} {message}")
        log.debug("topics_ensured", topics=names)
    finally:
        await admin.close()
    if existed:
        found = await topic_partitions(settings)
        wrong = {t: found[t] for t in existed if found.get(t, want) != want}
        if wrong:
            raise TopicMismatch(
                f"topics exist with other partition counts than {want}: {wrong}; delete them "
                "(they were made before the run) or make the run's partitions match"
            )


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
