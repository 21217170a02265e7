"""The dashboard's follower: reads a run's metrics, event and dead-letter topics and polls Redis.

It never calls a participant. Topics are read by explicit partition assignment from offset 0
(a :class:`~brokers.kafka.PartitionReader`: no consumer group, no end offsets), so the same
follower shows a run that is going on and replays one that has finished. Redis is polled for
what the streams do not carry: live rosters, barrier arrivals of open rounds, and the
staleness of the updates a round accepted (read when its "closed" event arrives live).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import ConsumerRecord, TopicPartition

from brokers.admin import topic_partitions
from brokers.kafka import KafkaSettings, PartitionReader
from brokers.lifecycle import Service
from brokers.state import RedisState
from schemas.codec import Decoder, dead_letter_decoder, event_decoder, metrics_decoder
from schemas.errors import WireError
from schemas.keyspace import Keyspace
from schemas.messages import RoundEvent
from schemas.topics import Topics
from worldlm.dashboard.state import DashboardState

log = structlog.get_logger("worldlm.dashboard")

#: A "closed" round event younger than this is live: Redis still holds that round's figures.
LIVE_EVENT_S = 10.0


async def discover_runs(settings: KafkaSettings, prefix: str = "worldlm") -> list[str]:
    """Run ids that have a metrics topic on the cluster, sorted."""
    found = await topic_partitions(settings)
    head, tail = f"{prefix}.", ".metrics"
    return sorted(
        t[len(head) : -len(tail)] for t in found if t.startswith(head) and t.endswith(tail)
    )


class DashboardFollower(Service):
    """Feeds a :class:`DashboardState` from Kafka and Redis until stopped."""

    def __init__(
        self,
        state: DashboardState,
        kafka: str,
        redis: str,
        *,
        poll_s: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.topics = Topics(state.run_id)
        self.settings = KafkaSettings(
            bootstrap=kafka, client_id=f"worldlm-dashboard-{state.run_id}"
        )
        self.redis = RedisState(redis, Keyspace(state.run_id))
        self.poll_s = poll_s
        self.on_change = on_change or (lambda: None)
        self.log = log.bind(run=state.run_id)
        self._decoders: dict[str, Decoder[Any]] = {
            self.topics.metrics: metrics_decoder,
            self.topics.events: event_decoder,
            self.topics.dead_letter: dead_letter_decoder,
        }
        self._reader: PartitionReader | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_rounds: asyncio.Queue[RoundEvent] = asyncio.Queue()
        self.records = 0
        self.undecodable = 0
        self.connected = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        await self.redis.start()
        for name, body in (("kafka", self._follow()), ("redis", self._poll())):
            task = asyncio.create_task(body, name=f"dashboard-{name}")
            task.add_done_callback(self._task_done)
            self._tasks.add(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error(
                "dashboard_follower_failed", task=task.get_name(), error=repr(task.exception())
            )

    async def stop(self) -> None:
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()
        await self.redis.stop()
        self.log.info(
            "dashboard_follower_stopped", records=self.records, undecodable=self.undecodable
        )

    # -- Kafka --------------------------------------------------------------------------

    async def _wait_for_topics(self) -> dict[TopicPartition, int]:
        """Offset 0 of every partition of the run's topics, once they all exist."""
        wanted = list(self._decoders)
        waited = False
        while True:
            try:
                found = await topic_partitions(self.settings)
            except Exception as exc:  # the broker may not be up yet: keep trying
                self.log.warning("dashboard_kafka_unreachable", error=repr(exc))
                found = {}
            if all(found.get(t) for t in wanted):
                return {TopicPartition(t, p): 0 for t in wanted for p in range(found[t])}
            if not waited:
                self.log.info(
                    "dashboard_waiting_for_run", missing=[t for t in wanted if not found.get(t)]
                )
                waited = True
            await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        start = await self._wait_for_topics()
        self._reader = PartitionReader(self.settings, start)
        await self._reader.start()
        self.connected = True
        self.log.info("dashboard_following", partitions=len(start))
        while True:
            records = await self._reader.fetch(timeout_ms=200)
            for record in records:
                self._fold(record)
            if records:
                self.on_change()
            while not self._closed_rounds.empty():
                await self._read_round_staleness(self._closed_rounds.get_nowait())

    def _fold(self, record: ConsumerRecord) -> None:
        self.records += 1
        try:
            message = self._decoders[record.topic].decode(record.value or b"")
        except WireError as exc:
            self.undecodable += 1
            self.state.counters["undecodable"] += 1
            self.log.warning(
                "dashboard_record_undecodable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            return
        self.state.apply(message, (record.topic, record.partition, record.offset))
        if (
            isinstance(message, RoundEvent)
            and message.action == "closed"
            and time.time() - message.envelope.timestamp < LIVE_EVENT_S
        ):
            self._closed_rounds.put_nowait(message)

    async def _read_round_staleness(self, event: RoundEvent) -> None:
        """The staleness of each update a sync round accepted: its arrivals' latest values."""
        fed = self.state.federations.get(event.envelope.federation)
        if fed is None or fed.mode == "async":
            return  # async rounds keep no arrival set; the metrics' figures are used instead
        barrier = await self.redis.barrier(fed.id, event.round)
        latest = await self.redis.staleness(fed.id)
        samples = {m: latest[m][0] for m in barrier.members if m in latest}
        if samples and len(samples) == len(barrier.members):
            self.state.apply_staleness(fed.id, event.round, samples)
            self.on_change()

    # -- Redis --------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # Redis may restart; the dashboard keeps going
                self.log.warning("dashboard_redis_poll_failed", error=repr(exc))
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        """Read every known federation's roster, leading replica, and open round's barrier."""
        changed = False
        for fid in list(self.state.federations):
            roster = await self.redis.roster(fid)
            roles = {
                m: str(info.get("role", ""))
                for m, info in (await self.redis.member_info(fid)).items()
            }
            seq = self.state.seq
            self.state.apply_roster(fid, roster.live, roster.expired, roles, at=time.time())
            self.state.apply_leader(fid, await self.redis.leader(fid))
            fed = self.state.federations[fid]
            if fed.round_open:
                status = await self.redis.barrier(fid, fed.round)
                self.state.apply_barrier(
                    fid, fed.round, status.arrived, status.quorum, status.closed
                )
            changed = changed or self.state.seq != seq
        if changed:
            self.on_change()
