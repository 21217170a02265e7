"""Is the Kafka broker there? One watch per process and broker, read by every participant.

A lost broker shows everywhere at once: every aiokafka client of a process (its producer,
each reader) retries on its own and logs an error at each retry, every 100 ms each (12 625
lines in 45 s when issue 19's probe killed the broker of a run). Instead one
:class:`HealthWatch` per process and broker asks the broker for its metadata (every topic, a
request that creates none) every ``PROBE_S``, each probe bounded by ``PROBE_TIMEOUT_S``, and
keeps one state that participants read through their :class:`BrokerHealth` (a
:class:`~worldlm.participants.node.Node` holds one):

* ``up``: the last probe was answered;
* ``failing``: probes fail (not for long yet);
* ``lost``: three probes in a row failed, over ``LOST_AFTER_S`` at least: logged once
  (``kafka_lost``); answered again, the watch is ``up`` and says so once (``kafka_back``);
* ``gone``: lost for good (``kafka_gone``; final). :meth:`BrokerHealth.guard` then cancels
  the participant's work and raises :class:`BrokerLost`.

When a lost broker is gone depends on whether it keeps its log. The embedded broker in memory
(``worldlm run`` without ``--durable``) loses every record when it dies, so a run cannot go on
correctly: gone once lost, or once a probe finds a topic it had missing or resized (it came
back empty, restarted on its port). Only the process that started it knows it keeps no log:
such a broker is in :data:`forgetful` while it runs. Any other broker (``--durable``, Apache
Kafka) keeps its log and is waited for: gone only when it was lost for ``WAIT_S``; meanwhile
sends wait for it (:data:`REQUEST_TIMEOUT_MS`: aiokafka retries a send until then).

While a watch is not ``up``, aiokafka's own warnings and errors are dropped and counted
(``log_suppressed``); the first one while ``up`` passes and makes every watch probe at once,
staying quiet until the probe answers. The decisions are :class:`~brokers.liveness.HealthCore`'s
(no I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Hashable
from typing import Any, TypeVar, cast

import structlog
from aiokafka.client import AIOKafkaClient

from brokers.kafka import KafkaSettings
from brokers.lifecycle import Service
from brokers.liveness import (
    LOST_AFTER_S,
    WAIT_S,
    Back,
    BrokerLost,
    Change,
    Gone,
    HealthCore,
    Lost,
    State,
)
from brokers.security import KafkaSecurity
from brokers.shared import Shared

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Between two probes.
PROBE_S = 1.0
#: One probe's bound (a metadata request). A broker that died refuses at once; one that is
#: only starved gets this long, three times over, before it counts as lost.
PROBE_TIMEOUT_S = 5.0

#: How long a participant's Kafka requests (a send among them) may wait: past the watch's
#: wait for a broker that keeps its log, so that the watch decides when waiting is over.
REQUEST_TIMEOUT_MS = int((3 * (PROBE_S + PROBE_TIMEOUT_S) + WAIT_S + 30.0) * 1000)

#: Bootstraps of brokers, started by this process, that keep their log in memory only (an
#: :class:`~brokers.embedded.EmbeddedKafka` without storage adds itself while it runs).
forgetful: set[str] = set()


class _Quiet(logging.Filter):
    """On aiokafka's loggers: drops their warnings and errors while a watch is not ``up``."""

    def __init__(self) -> None:
        super().__init__("aiokafka")
        self.watches: set[HealthWatch] = set()

    def install(self) -> None:
        for name in list(logging.root.manager.loggerDict):
            if name == "aiokafka" or name.startswith("aiokafka."):
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self.watches:
            return True
        quiet = [w for w in self.watches if w.quiet]
        for watch in quiet:
            watch.counters["log_suppressed"] += 1
        if quiet:
            return False
        for watch in self.watches:
            watch.hint(record.getMessage())
        return True


_quiet = _Quiet()


class HealthWatch:
    """The process's watch on one broker (shared: :data:`watches`); see the module's doc."""

    def __init__(
        self,
        bootstrap: str,
        security: KafkaSecurity,
        *,
        keeps_log: bool,
        probe_s: float = PROBE_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        lost_after_s: float = LOST_AFTER_S,
        wait_s: float = WAIT_S,
    ) -> None:
        self.bootstrap = bootstrap
        self.log = structlog.get_logger(__name__).bind(bootstrap=bootstrap)
        self.core = HealthCore(keeps_log=keeps_log, lost_after_s=lost_after_s, wait_s=wait_s)
        self.probe_s, self.probe_timeout_s = probe_s, probe_timeout_s
        self.counters: Counter[str] = Counter()  # probes, probes_failed, outages, log_suppressed
        self.gone = asyncio.Event()
        self.lost: Gone | None = None
        self._client = AIOKafkaClient(
            bootstrap_servers=bootstrap,
            client_id="worldlm-health",
            request_timeout_ms=int(probe_timeout_s * 1000),
            **security.client_kwargs(),
        )
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._hinted: str | None = None  # aiokafka's message that made us look now
        self._first_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> State:
        return self.core.state

    @property
    def quiet(self) -> bool:
        """aiokafka's warnings are dropped: the broker is not known to be ``up``."""
        return self._hinted is not None or self.core.state is not State.UP

    def hint(self, message: str) -> None:
        """aiokafka complained: probe now, quiet until the probe answers."""
        self._hinted = message
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            self._loop.call_soon_threadsafe(self._wake.set)

    def error(self) -> BrokerLost:
        assert self.lost is not None
        return BrokerLost(self.bootstrap, self.lost, keeps_log=self.core.keeps_log)

    async def start(self) -> None:
        try:
            await self._client.bootstrap()
        except BaseException:
            await asyncio.shield(self._client.close())
            raise
        topics = await self._probe()  # the topics as of now
        if topics is not None:
            self.core.reached(time.monotonic(), topics)
        _quiet.install()
        _quiet.watches.add(self)
        self._task = asyncio.create_task(self._run(), name=f"kafka-health-{self.bootstrap}")
        self._task.add_done_callback(_failed)

    async def stop(self) -> None:
        _quiet.watches.discard(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._client.close()
        self.log.info("kafka_watch_stopped", state=str(self.state), **dict(self.counters))

    async def _probe(self) -> dict[str, int] | None:
        """Every topic and its partition count, or None when the broker did not answer."""
        self.counters["probes"] += 1
        try:
            async with asyncio.timeout(self.probe_timeout_s):
                metadata = await self._client.fetch_all_metadata()
        except Exception as exc:  # refused, reset, timed out: no answer
            self.counters["probes_failed"] += 1
            self._first_error = self._first_error or self._hinted or repr(exc)
            return None
        return {t: len(metadata.partitions_for_topic(t) or ()) for t in metadata.topics()}

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_s):
                    await self._wake.wait()
            self._wake.clear()
            topics = await self._probe()
            now = time.monotonic()
            core = self.core
            change = core.failed(now) if topics is None else core.reached(now, topics)
            self._hinted = None
            if core.state is State.UP:
                self._first_error = None
            if change is not None:
                self._report(change)
            if core.state is State.GONE:
                self.gone.set()
                return

    def _report(self, change: Change) -> None:
        log, where = self.log, {"keeps_log": self.core.keeps_log}
        match change:
            case Lost():
                self.counters["outages"] += 1
                log.warning(
                    "kafka_lost", waiting_s=self.core.wait_s, error=self._first_error, **where
                )
            case Back(outage_s=outage):
                suppressed = self.counters["log_suppressed"]
                log.warning(
                    "kafka_back", outage_s=round(outage, 1), log_suppressed=suppressed, **where
                )
            case Gone():
                self.lost = change
                log.error(
                    "kafka_gone",
                    reason=change.reason,
                    outage_s=round(change.outage_s, 1),
                    missing=list(change.missing[:5]),
                    error=self._first_error,
                    **where,
                    **dict(self.counters),
                )


def _failed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("kafka_watch_failed", error=repr(task.exception()))


async def _open(key: Hashable) -> HealthWatch:
    bootstrap, security, keeps_log = cast(tuple[str, KafkaSecurity, bool], key)
    watch = HealthWatch(bootstrap, security, keeps_log=keeps_log)
    await watch.start()
    return watch


#: The process's watches, one per broker (and whether it keeps its log).
watches: Shared[HealthWatch] = Shared(_open, lambda w: w.stop())


class BrokerHealth(Service):
    """A participant's hold on the process's watch of its broker (started with it)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._key: tuple[str, KafkaSecurity, bool] | None = None
        self.watch: HealthWatch | None = None

    async def start(self) -> None:
        if self.watch is None:
            bootstrap = self.settings.bootstrap
            self._key = (bootstrap, self.settings.security, bootstrap not in forgetful)
            self.watch = await watches.acquire(self._key)

    async def stop(self) -> None:
        if self.watch is not None and self._key is not None:
            self.watch = None
            await watches.release(self._key)

    @property
    def gone(self) -> bool:
        """The broker is gone for good."""
        return self.watch is not None and self.watch.gone.is_set()

    def error(self) -> BrokerLost:
        """What a participant raises once the broker is :attr:`gone`."""
        assert self.watch is not None
        return self.watch.error()

    async def guard(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result, unless the broker is gone for good first: then ``work`` is
        cancelled (its shutdown steps run) and :class:`BrokerLost` is raised."""
        watch = self.watch
        if watch is None:
            return await work
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(watch.gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if watch.lost is not None and (task.cancelled() or task.exception() is not None):
            raise watch.error() from None if task.cancelled() else task.exception()
        return task.result()
