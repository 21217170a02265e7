"""Redis adapter on redis.asyncio: barriers, membership, model pointers, staleness.

The residual-embedding cache is :class:`brokers.residuals.ResidualCache`, reached as
:attr:`RedisState.residuals` on the same connection.

Key names come from :class:`schemas.keyspace.Keyspace`; every key gets a TTL. Transitions that
touch several keys or must happen once (a close recorded, a member joining, a version moving
forward) are Lua scripts (:mod:`brokers.scripts`), so concurrent participants cannot race
them. Time inside scripts is the Redis server's clock, so heartbeats do not depend on the
participants' clocks agreeing.

Redis holds views, not decisions: a barrier shows a round's arrivals and the quorum its
federation's round core asks for, and is closed when the core closed the round
(:meth:`RedisState.close_round`, with the core's reason); no script closes a round itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from brokers.lifecycle import Service
from brokers.residuals import ResidualCache
from brokers.scripts import (
    ARRIVE,
    CLOSE,
    HEARTBEAT,
    LEASE,
    PURGE,
    RELEASE,
    ROSTER,
    SET_VERSION,
)
from brokers.shared import open_redis, redis_pools
from schemas.keyspace import Keyspace


@dataclass(frozen=True)
class Arrival:
    """The outcome of one arrival at a round barrier (recorded, never a decision)."""

    accepted: bool  # False: a duplicate, or the round was already closed
    arrived: int  # distinct members arrived, this one included if accepted
    quorum: int  # as the caller gave it (the round core's), or as recorded once closed
    closed: bool  # the round was closed before this arrival: it was refused


@dataclass(frozen=True)
class BarrierStatus:
    arrived: int
    quorum: int
    closed: bool
    reason: str
    members: frozenset[str]


@dataclass(frozen=True)
class Roster:
    """Members of a federation by heartbeat state, at the Redis server's clock."""

    live: tuple[str, ...]
    expired: tuple[str, ...]


@dataclass(frozen=True)
class ModelPointer:
    """The current model version of a federation and where its broadcast lies."""

    version: int
    topic: str
    partition: int
    offset: int
    updated_ms: int


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisState(Service):
    """The control state of one run, in Redis."""

    def __init__(
        self,
        url: str,
        keyspace: Keyspace,
        *,
        ttl_s: int = 7 * 24 * 3600,
        max_value_bytes: int = 8 * 1024 * 1024,
        retries: int = 8,
        shared: bool = False,
    ) -> None:
        self.url = url
        self.shared = shared  # use the process's pool for ``url`` instead of an own one
        self.retries = retries
        self.keyspace = keyspace
        self.ttl_s = ttl_s
        self.max_value_bytes = max_value_bytes
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._residuals: ResidualCache | None = None

    async def start(self) -> None:
        if self._redis is not None:
            return
        if self.shared:  # the process's pool for this URL (brokers.shared)
            self._redis = await redis_pools.acquire((self.url, self.retries))
        else:
            self._redis = await open_redis(self.url, self.retries)
        for name, body in {
            "arrive": ARRIVE,
            "close": CLOSE,
            "heartbeat": HEARTBEAT,
            "lease": LEASE,
            "release": RELEASE,
            "purge": PURGE,
            "roster": ROSTER,
            "set_version": SET_VERSION,
        }.items():
            self._scripts[name] = self._redis.register_script(body)
        self._residuals = ResidualCache(
            self._redis, self.keyspace, ttl_s=self.ttl_s, max_value_bytes=self.max_value_bytes
        )

    async def stop(self) -> None:
        redis, self._redis, self._residuals = self._redis, None, None
        if redis is not None and self.shared:
            await redis_pools.release((self.url, self.retries))
        elif redis is not None:
            await redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("RedisState is not started")
        return self._redis

    @property
    def residuals(self) -> ResidualCache:
        """The run's residual-embedding cache (:mod:`brokers.residuals`)."""
        if self._residuals is None:
            raise RuntimeError("RedisState is not started")
        return self._residuals

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        if self._redis is None:
            raise RuntimeError("RedisState is not started")
        return await self._scripts[script](keys=keys, args=args)

    # -- round barriers -------------------------------------------------------------------

    async def arrive(self, federation: str, round: int, member: str, *, quorum: int) -> Arrival:
        """Record ``member``'s arrival and the round's ``quorum`` (decided by the round core:
        shown, not acted on), atomically; refused once the round is closed."""
        k = self.keyspace
        accepted, arrived, q, closed = await self._run(
            "arrive",
            [k.barrier_arrivals(federation, round), k.barrier_state(federation, round)],
            [member, quorum, self.ttl_s],
        )
        return Arrival(bool(accepted), int(arrived), int(q), bool(closed))

    async def close_round(self, federation: str, round: int, reason: str, closer: str = "") -> bool:
        """Record the close of a round with the reason its round core gave; True for the one
        caller that recorded it (later arrivals are refused)."""
        k = self.keyspace
        closed_now, _ = await self._run(
            "close",
            [k.barrier_state(federation, round), k.barrier_arrivals(federation, round)],
            [reason, closer, self.ttl_s],
        )
        return bool(closed_now)

    async def barrier(self, federation: str, round: int) -> BarrierStatus:
        k = self.keyspace
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(k.barrier_state(federation, round))
            pipe.smembers(k.barrier_arrivals(federation, round))
            state, members = await pipe.execute()
        return BarrierStatus(
            arrived=len(members),
            quorum=int(state.get(b"quorum", 0)),
            closed=state.get(b"closed") == b"1",
            reason=_str(state.get(b"reason", b"")),
            members=frozenset(_str(m) for m in members),
        )

    # -- membership -----------------------------------------------------------------------

    async def heartbeat(
        self, federation: str, member: str, *, ttl_s: float, role: str = "client"
    ) -> bool:
        """Renew ``member``'s heartbeat for ``ttl_s``; True if it (re)joined just now."""
        return (await self.heartbeats([(federation, member, ttl_s, role)]))[0]

    async def heartbeats(self, beats: Sequence[tuple[str, str, float, str]]) -> list[bool]:
        """Renew many heartbeats (federation, member, ttl_s, role) in one round trip; for
        each, True if that member (re)joined just now."""
        k, script = self.keyspace, self._scripts["heartbeat"]
        async with self.redis.pipeline(transaction=False) as pipe:
            for federation, member, ttl_s, role in beats:
                keys = [k.members(federation), k.member_info(federation)]
                info = json.dumps({"role": role})
                await script(keys, [member, int(ttl_s * 1000), info, self.ttl_s], pipe)
            return [bool(joined) for joined in await pipe.execute()]

    async def leave(self, federation: str, member: str) -> None:
        """Remove ``member`` at once (a clean leave); it stays named as departed
        (:meth:`departed`) until it joins again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keyspace.members(federation), member)
            pipe.hset(self.keyspace.member_info(federation), member, json.dumps({"left": True}))
            await pipe.execute()

    async def departed(self, federation: str) -> frozenset[str]:
        """Members that left cleanly and have not joined again (a crashed member is not
        among them: it never said goodbye)."""
        info = await self.member_info(federation)
        return frozenset(m for m, i in info.items() if i.get("left"))

    # -- leadership of a federation among aggregator replicas ---------------------------

    async def lead(self, federation: str, holder: str, *, ttl_s: float) -> bool:
        """Take or renew the lead of ``federation`` for ``ttl_s``; False if another holds it."""
        return bool(
            await self._run(
                "lease", [self.keyspace.leader(federation)], [holder, int(ttl_s * 1000)]
            )
        )

    async def resign(self, federation: str, holder: str) -> bool:
        """Give the lead up at once, if ``holder`` has it (a clean stop)."""
        return bool(await self._run("release", [self.keyspace.leader(federation)], [holder]))

    async def leader(self, federation: str) -> str | None:
        """The token of the replica leading ``federation`` (None: nobody)."""
        value = await self.redis.get(self.keyspace.leader(federation))
        return _str(value) if value is not None else None

    async def roster(self, federation: str) -> Roster:
        """Live and expired members, by the server's clock."""
        items = [
            _str(m) for m in await self._run("roster", [self.keyspace.members(federation)], [])
        ]
        split = items.index("")
        return Roster(live=tuple(items[:split]), expired=tuple(items[split + 1 :]))

    async def purge_expired(self, federation: str) -> list[str]:
        """Remove members whose heartbeat expired and return them; each is returned once."""
        gone = await self._run("purge", [self.keyspace.members(federation)], [])
        return [_str(m) for m in gone]

    async def member_info(self, federation: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(self.keyspace.member_info(federation))
        return {_str(k): json.loads(v) for k, v in raw.items()}

    # -- model versions -------------------------------------------------------------------

    async def set_model_version(
        self, federation: str, version: int, *, topic: str, partition: int, offset: int
    ) -> bool:
        """Point at a new broadcast; ignored (False) unless ``version`` moves forward."""
        moved = await self._run(
            "set_version",
            [self.keyspace.model_version(federation)],
            [version, topic, partition, offset, self.ttl_s],
        )
        return bool(moved)

    async def model_version(self, federation: str) -> ModelPointer | None:
        raw = await self.redis.hgetall(self.keyspace.model_version(federation))
        if not raw:
            return None
        return ModelPointer(
            version=int(raw[b"version"]),
            topic=_str(raw[b"topic"]),
            partition=int(raw[b"partition"]),
            offset=int(raw[b"offset"]),
            updated_ms=int(raw[b"updated_ms"]),
        )

    # -- staleness ------------------------------------------------------------------------

    async def record_staleness(self, federation: str, member: str, staleness: int) -> None:
        """Record the staleness of ``member``'s latest accepted update and count stale ones."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keyspace.staleness(federation), member, staleness)
            pipe.hincrby(self.keyspace.stale_updates(federation), member, 1 if staleness > 0 else 0)
            pipe.expire(self.keyspace.staleness(federation), self.ttl_s)
            pipe.expire(self.keyspace.stale_updates(federation), self.ttl_s)
            await pipe.execute()

    async def staleness(self, federation: str) -> dict[str, tuple[int, int]]:
        """member -> (latest staleness, number of stale updates)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keyspace.staleness(federation))
            pipe.hgetall(self.keyspace.stale_updates(federation))
            latest, counts = await pipe.execute()
        return {_str(m): (int(s), int(counts.get(m, 0))) for m, s in latest.items()}
