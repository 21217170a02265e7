"""The run's revocation chain in Redis: the admin appends signed entries, participants verify.

Why Redis and not the key files: a revocation must reach every aggregator (replicas and
machines included) at once and survive restarts, and the run's Redis is already the place
every participant reads; key files live on each machine and would need copying first. Why
signed: Redis permissions are a second fence, not the authority. Where several principals
can write the key (no ACLs, or Redis 6, which has no read-only key patterns), a participant
could otherwise revoke anyone; so an entry counts only if the run's admin key signed it and
it links to the verified entry before it (:mod:`schemas.revocation`).

The list (``Keyspace.revoked_keys``, one entry per RPUSH, the run's TTL) names keys by
fingerprint, not participants, so a participant whose key was rotated goes on with its new
key. Readers fetch the list before they verify a batch of deltas (one LRANGE); each reader
keeps what it verified (:class:`~schemas.revocation.RevocationChain`), logs and counts an
entry it ignores (``revocation_ignored``, counter ``revocations_ignored``) and a list that no
longer extends what it verified (``revocations_tampered``, same counter), and never
un-revokes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from redis.exceptions import ResponseError

from brokers.scripts import APPEND_REVOCATION
from brokers.state import RedisState
from schemas.revocation import Action, ChainMemory, RevocationChain, make_entry

#: How often an append is tried again when the list changed between reading and writing.
APPEND_ATTEMPTS = 5


class RevocationError(RuntimeError):
    """An append that kept meeting a list changed under it (not retriable further here)."""


class Revocations:
    """Read (and, with the admin's private key, append to) the run's revocation chain,
    through a started :class:`RedisState`; ``admin`` is the key entries must be signed by
    (None: a run that does not sign revokes nothing, and nothing is read)."""

    def __init__(
        self,
        state: RedisState,
        admin: Ed25519PublicKey | None,
        *,
        counters: Counter[str] | None = None,
        log: Any = None,
    ) -> None:
        self.state = state
        self.chain = RevocationChain(state.keyspace.run, admin) if admin is not None else None
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.log = log if log is not None else structlog.get_logger(__name__)

    @property
    def memory(self) -> ChainMemory:
        """What this reader verified so far."""
        return self.chain.memory if self.chain is not None else ChainMemory()

    @property
    def saved(self) -> dict[str, Any]:
        """:attr:`memory` as plain data, for a checkpoint (:meth:`recall` takes it back)."""
        return msgspec.to_builtins(self.memory) if self.chain is not None else {}

    def recall(self, saved: Mapping[str, Any]) -> None:
        """Take back what this reader verified before a restart (:attr:`saved`): the keys it
        revoked stay revoked, and a list that no longer extends its head is tampered."""
        if self.chain is not None and saved:
            self.chain.recall(msgspec.convert(saved, ChainMemory))

    async def revoked(self) -> dict[str, str]:
        """Fingerprint -> owner of every key revoked by a verified entry (now or before)."""
        return (await self._read())[1] if self.chain is not None else {}

    async def revoke(
        self, key: Ed25519PrivateKey, fingerprint: str, owner: str, action: Action = "revoke"
    ) -> bool:
        """Append an entry revoking ``owner``'s key ``fingerprint``, signed with the admin's
        ``key``; False if the chain revokes it already."""
        assert self.chain is not None, "appending needs the admin's public key"
        redis, name = self.state.redis, self.state.keyspace.revoked_keys()
        append = redis.register_script(APPEND_REVOCATION)
        for _ in range(APPEND_ATTEMPTS):
            length, revoked = await self._read()
            if fingerprint in revoked:
                return False
            entry = make_entry(self.chain.run, self.memory, fingerprint, owner, action, key)
            n, cleared = await append([name], [length, entry, self.state.ttl_s])
            if cleared:
                self.log.warning("revocations_not_a_list_removed", key=name)
            if n >= 0:
                self.log.info("key_revoked", owner=owner, fingerprint=fingerprint, action=action)
                return True
        raise RevocationError(f"{name} kept changing under {APPEND_ATTEMPTS} appends")

    async def _read(self) -> tuple[int, dict[str, str]]:
        """The list's length and the revoked keys, after verifying and reporting."""
        name = self.state.keyspace.revoked_keys()
        try:
            found = await self.state.redis.lrange(name, 0, -1)
            raws: list[bytes] | None = [r.encode() if isinstance(r, str) else r for r in found]
        except ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raws = None  # someone wrote another type there: nothing in it was signed
        assert self.chain is not None
        reading = self.chain.read(raws)
        for entry in reading.ignored:
            self.counters["revocations_ignored"] += 1
            self.log.warning(
                "revocation_ignored",
                reason=entry.reason,
                entry=entry.digest[:16],
                seq=entry.seq,
                owner=entry.owner,
                fingerprint=entry.fingerprint[:16],
            )
        if reading.tampered is not None:
            self.counters["revocations_tampered"] += 1
            self.log.error(
                "revocations_tampered",
                detail=reading.tampered,
                kept=len(reading.revoked),
                head=self.memory.seq,
            )
        return len(raws or ()), dict(reading.revoked)
