"""The run's revocation list: signing keys that no longer count, kept in Redis.

Why Redis and not the key files: a revocation must reach every aggregator (replicas and
machines included) at once and survive restarts, and the run's Redis is already the place
every participant reads; key files live on each machine and would need copying first. The
list names keys by fingerprint (``schemas.signing.fingerprint``), not participants, so a
participant whose key was rotated goes on with its new key. Readers fetch the list before
they verify a batch of deltas (one HGETALL); the hash gets the run's TTL like every key.
"""

from __future__ import annotations

from brokers.state import RedisState


class Revocations:
    """Revoke keys and read the list, through a started :class:`RedisState`."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    async def revoke(self, fingerprint: str, owner: str) -> bool:
        """Add ``owner``'s key ``fingerprint`` to the list; False if it was there already."""
        key = self.state.keyspace.revoked_keys()
        async with self.state.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, fingerprint, owner)
            pipe.expire(key, self.state.ttl_s)
            added, _ = await pipe.execute()
        return bool(added)

    async def revoked(self) -> dict[str, str]:
        """Fingerprint -> owner of every revoked key."""
        raw = await self.state.redis.hgetall(self.state.keyspace.revoked_keys())
        return {_str(fp): _str(owner) for fp, owner in raw.items()}


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
