"""The dashboard's web server (aiohttp): the page, its assets, a live SSE stream, Prometheus.

Routes:

* ``/`` — the page (``static/index.html``); ``/static/...`` — its assets, served from the
  package (nothing from a CDN);
* ``/events`` — server-sent events: one ``snapshot`` on connect, then ``delta`` events with
  the federations and clients that changed (whole entities: the browser replaces them);
* ``/api/state`` — the whole view as JSON;
* ``/metrics`` — Prometheus text exposition of the same figures;
* ``/healthz`` — liveness, and whether the follower reached Kafka.

:class:`Dashboard` composes the state, the follower and the server with an explicit lifecycle:
``await start()``, idempotent ``await stop()``, ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from brokers.lifecycle import Service
from worldlm.config.hierarchy import Hierarchy
from worldlm.dashboard.prometheus import CONTENT_TYPE, exposition, registry_for
from worldlm.dashboard.state import DashboardState
from worldlm.dashboard.stream import DashboardFollower

log = structlog.get_logger("worldlm.dashboard")

#: Deltas are pushed at most this often (seconds): a burst of records becomes one delta.
PUSH_INTERVAL_S = 0.25
#: A comment line keeps idle SSE connections (and proxies) open.
KEEPALIVE_S = 15.0
#: A viewer this many messages behind is dropped; its browser reconnects and gets a snapshot.
SUBSCRIBER_BACKLOG = 256

_json = msgspec.json.Encoder()


def static_dir() -> Path:
    return Path(str(resources.files("worldlm.dashboard") / "static"))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


class Dashboard(Service):
    """A live dashboard of one run, reading Kafka and Redis, serving HTTP on ``host:port``."""

    def __init__(
        self,
        *,
        kafka: str,
        redis: str,
        run_id: str,
        hierarchy: Hierarchy | None = None,
        host: str = "127.0.0.1",
        port: int = 8050,
        poll_s: float = 1.0,
    ) -> None:
        self.state = DashboardState(run_id, hierarchy)
        self._changed = asyncio.Event()
        self.follower = DashboardFollower(
            self.state, kafka, redis, poll_s=poll_s, on_change=self._changed.set
        )
        self.registry = registry_for(self.state)
        self.host, self.port = host, port
        self.log = log.bind(run=run_id)
        self._subscribers: set[asyncio.Queue[bytes | None]] = set()
        self._runner: web.AppRunner | None = None
        self._pusher: asyncio.Task[None] | None = None
        self.pushed = 0

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    # -- lifecycle ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        app.router.add_static("/static/", static_dir(), follow_symlinks=False)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # an ephemeral port: find out which one we got
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])
        await self.follower.start()
        self._pusher = asyncio.create_task(self._push(), name="dashboard-push")
        self._pusher.add_done_callback(self._pusher_done)
        self.log.info("dashboard_started", url=self.url)

    def _pusher_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("dashboard_push_failed", error=repr(task.exception()))

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        pusher, self._pusher = self._pusher, None
        if pusher is not None:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # ends the viewer's stream
        await self.follower.stop()
        await runner.cleanup()
        self.log.info(
            "dashboard_stopped",
            pushed=self.pushed,
            records=self.follower.records,
            undecodable=self.follower.undecodable,
        )

    # -- pushing ------------------------------------------------------------------------

    async def _push(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._changed.wait()
            self._changed.clear()
            delta = self.state.take_delta()
            if delta is not None and self._subscribers:
                self._fan_out(_sse("delta", delta))
            await asyncio.sleep(PUSH_INTERVAL_S)

    def _fan_out(self, message: bytes) -> None:
        self.pushed += 1
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                self.log.warning("dashboard_viewer_dropped", reason="backlog")

    # -- handlers -----------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(static_dir() / "index.html")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        try:
            await response.write(b"retry: 2000\n" + _sse("snapshot", self.state.snapshot()))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        message = await queue.get()
                except TimeoutError:
                    message = b": keepalive\n\n"
                if message is None:
                    break
                await response.write(message)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_json.encode(self.state.snapshot()), content_type="application/json"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=exposition(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def _health(self, request: web.Request) -> web.Response:
        body = {"ok": True, "kafka": self.follower.connected, "records": self.follower.records}
        return web.Response(body=_json.encode(body), content_type="application/json")
