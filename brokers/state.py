"""Redis adapter on redis.asyncio: barriers, membership, model pointers, staleness, residuals.

Key names come from :class:`schemas.keyspace.Keyspace`; every key gets a TTL. Transitions that
touch several keys or must be decided once (a barrier closing, a member joining, a version
moving forward) are Lua scripts (:mod:`brokers.scripts`), so concurrent participants cannot
race them. Time inside scripts is the Redis server's clock, so heartbeats do not depend on the
participants' clocks agreeing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis

from brokers.lifecycle import Service
from brokers.scripts import (
    ARRIVE,
    CLOSE,
    HEARTBEAT,
    LEASE,
    PURGE,
    RELEASE,
    ROSTER,
    SET_RESIDUAL,
    SET_VERSION,
)
from brokers.shared import open_redis, redis_pools
from schemas.delta import content_hash
from schemas.keyspace import Keyspace
from schemas.messages import Seal, TensorSpec
from schemas.sealing import SealError, Unsealer, seal_blob
from schemas.tensors import check_specs, pack, unpack

if TYPE_CHECKING:
    import torch
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey


@dataclass(frozen=True)
class Arrival:
    """The outcome of one arrival at a round barrier."""

    accepted: bool  # False: a duplicate, or the barrier was already closed
    arrived: int
    quorum: int
    closed_now: bool  # True for exactly one caller: the one whose arrival closed the round
    closed: bool


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


@dataclass(frozen=True)
class Residual:
    """A federation's latest key layers (its residual embedding) from the cache."""

    federation: str
    round: int
    tensors: dict[str, torch.Tensor]
    written_ms: int


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str | None) -> bytes:
    if value is None:
        raise KeyError("missing value")
    return value.encode() if isinstance(value, str) else value


_specs_encoder = msgspec.msgpack.Encoder()
_specs_decoder = msgspec.msgpack.Decoder(tuple[TensorSpec, ...])
_seal_decoder = msgspec.msgpack.Decoder(Seal)


def residual_label(federation: str, round: int, specs: bytes) -> str:
    """What a sealed residual entry is bound to: its federation, round and tensor specs (an
    entry moved to another federation or round, or given other shapes, does not open)."""
    return f"residual|{federation}|{round}|{content_hash(specs)}"


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
            "set_residual": SET_RESIDUAL,
        }.items():
            self._scripts[name] = self._redis.register_script(body)

    async def stop(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None and self.shared:
            await redis_pools.release((self.url, self.retries))
        elif redis is not None:
            await redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("RedisState is not started")
        return self._redis

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        if self._redis is None:
            raise RuntimeError("RedisState is not started")
        return await self._scripts[script](keys=keys, args=args)

    # -- round barriers -------------------------------------------------------------------

    async def arrive(
        self,
        federation: str,
        round: int,
        member: str,
        *,
        quorum: int = 0,
        fraction: float = 1.0,
        min_quorum: int = 1,
    ) -> Arrival:
        """Record ``member``'s arrival and check the quorum, atomically.

        The quorum is ``quorum`` if positive, else ``max(min_quorum, ceil(fraction * live))``
        over the federation's live members now.
        """
        k = self.keyspace
        accepted, arrived, q, closed_now, closed = await self._run(
            "arrive",
            [
                k.barrier_arrivals(federation, round),
                k.barrier_state(federation, round),
                k.members(federation),
            ],
            [member, quorum, fraction, min_quorum, self.ttl_s],
        )
        return Arrival(bool(accepted), int(arrived), int(q), bool(closed_now), bool(closed))

    async def close_round(self, federation: str, round: int, reason: str, closer: str = "") -> bool:
        """Close a round (for example at its deadline); True for the one caller that closed it."""
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
        """Remove ``member`` at once (a clean leave)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keyspace.members(federation), member)
            pipe.hdel(self.keyspace.member_info(federation), member)
            await pipe.execute()

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

    # -- residual embeddings --------------------------------------------------------------

    async def put_residual(
        self,
        federation: str,
        round: int,
        tensors: Mapping[str, torch.Tensor],
        *,
        seal_to: Mapping[str, X25519PublicKey] | None = None,
    ) -> bool:
        """Store ``federation``'s key layers for ``round``; False if a newer round is cached.

        Payloads larger than ``max_value_bytes`` are stored in parts under a fresh generation;
        the manifest switches to it atomically, and the old generation's parts expire after a
        grace period, so a reader that raced the switch still finds what it started reading.

        With ``seal_to`` (id -> X25519 public key) the payload is sealed to those readers
        (:func:`schemas.sealing.seal_blob`): the parts hold ciphertext, the manifest its seal
        and the hash of the ciphertext (a plaintext hash would confirm a guess).
        """
        specs, plain = pack(tensors)
        encoded_specs = _specs_encoder.encode(specs)
        seal, payload = b"", memoryview(plain)
        if seal_to is not None:
            sealed, ciphertext = seal_blob(
                residual_label(federation, round, encoded_specs), plain, seal_to
            )
            seal, payload = msgspec.msgpack.encode(sealed), memoryview(ciphertext)
        size = self.max_value_bytes
        view = memoryview(payload)
        parts = max(1, -(-len(payload) // size))
        generation = uuid.uuid4().hex
        k = self.keyspace
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in range(parts):
                pipe.set(
                    k.residual_part(federation, generation, i),
                    bytes(view[i * size : (i + 1) * size]),
                    ex=self.ttl_s,
                )
            await pipe.execute()
        previous = await self._run(
            "set_residual",
            [k.residual(federation)],
            [
                round,
                generation,
                parts,
                content_hash(payload),
                encoded_specs,
                len(payload),
                self.ttl_s,
                seal,
            ],
        )
        if not previous:
            await self.redis.delete(
                *(k.residual_part(federation, generation, i) for i in range(parts))
            )
            return False
        old_gen, old_parts = _str(previous[0]), int(previous[1])
        if old_gen:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in range(old_parts):
                    pipe.expire(k.residual_part(federation, old_gen, i), 60)
                await pipe.execute()
        return True

    async def get_residual(
        self, federation: str, *, unsealer: Unsealer | None = None
    ) -> Residual | None:
        """The latest cached key layers of ``federation``, or None; never waits for a writer.

        With ``unsealer`` (a sealing run) the entry must be sealed to its owner; an entry that
        is not, or that it cannot open, raises :class:`schemas.sealing.SealError` (``unsealed``,
        ``not_a_recipient``, ...); without one a sealed entry raises it too (``sealed``).
        """
        for _ in range(3):
            raw = await self.redis.hgetall(self.keyspace.residual(federation))
            if not raw:
                return None
            generation, parts = _str(raw[b"generation"]), int(raw[b"parts"])
            values = await self.redis.mget(
                [self.keyspace.residual_part(federation, generation, i) for i in range(parts)]
            )
            if any(v is None for v in values):
                continue  # the generation expired under us: read the newer manifest
            payload = bytearray(b"".join(_bytes(v) for v in values))
            if content_hash(payload) != _str(raw[b"hash"]):
                raise ValueError(f"residual of {federation}: content hash mismatch")
            encoded_specs = _bytes(raw[b"specs"])
            specs = _specs_decoder.decode(encoded_specs)
            seal = raw.get(b"seal") or b""
            who = f"residual of {federation}"
            if seal and unsealer is None:
                raise SealError("sealed", f"{who}: sealed, and this reader has no key")
            if unsealer is not None:
                if not seal:
                    raise SealError("unsealed", f"{who}: not sealed, and this run requires it")
                label = residual_label(federation, int(raw[b"round"]), encoded_specs)
                try:
                    sealed = _seal_decoder.decode(_bytes(seal))
                except msgspec.DecodeError:
                    raise SealError("bad_seal", f"{who}: undecodable seal") from None
                payload = bytearray(unsealer.open_blob(label, sealed, payload))
            check_specs(specs, len(payload))
            return Residual(
                federation=federation,
                round=int(raw[b"round"]),
                tensors=unpack(specs, payload),
                written_ms=int(raw[b"written_ms"]),
            )
        return None
