"""The residual-embedding cache in Redis: each federation's latest key layers, optionally sealed.

A federation that closes a round writes its key layers here; a linked federation reads the
latest entry when it aggregates and never waits for a writer. Entries are a manifest hash (round,
generation, parts, content hash, tensor specs, seal) and the payload in parts of at most
``max_value_bytes``; the manifest switches generations atomically (:data:`brokers.scripts.
SET_RESIDUAL`), so an older round never replaces a newer one. Reached as
:attr:`brokers.state.RedisState.residuals`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis

from brokers.scripts import SET_RESIDUAL
from schemas.delta import content_hash
from schemas.keyspace import Keyspace
from schemas.messages import Seal, TensorSpec
from schemas.sealing import SealError, Unsealer, seal_blob
from schemas.tensors import check_specs, pack, unpack

if TYPE_CHECKING:
    import torch
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey


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


class ResidualCache:
    """The residual-embedding cache of one run, on a started Redis client."""

    def __init__(
        self, redis: aioredis.Redis, keyspace: Keyspace, *, ttl_s: int, max_value_bytes: int
    ) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.ttl_s = ttl_s
        self.max_value_bytes = max_value_bytes
        self._set: Any = redis.register_script(SET_RESIDUAL)

    async def put(
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
        parts = max(1, -(-len(payload) // size))
        generation = uuid.uuid4().hex
        k = self.keyspace
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in range(parts):  # redis-py sends a memoryview as it is: no copy per part
                pipe.set(
                    k.residual_part(federation, generation, i),
                    payload[i * size : (i + 1) * size],
                    ex=self.ttl_s,
                )
            await pipe.execute()
        previous = await self._set(
            keys=[k.residual(federation)],
            args=[
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

    async def get(self, federation: str, *, unsealer: Unsealer | None = None) -> Residual | None:
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
            payload = bytearray().join(_bytes(v) for v in values)  # one copy, writable
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
