"""An attacker on the revocation chain: one client's own Redis user, and a writer no ACL
stops (the admin's connection standing for a Redis without users, or a slip in them).

Each write is an :class:`Attempt`: landed, or refused with Redis's answer (``NOPERM``,
``WRONGTYPE``). Used by :mod:`worldlm.chaos.revocation`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from schemas.revocation import revocation_decoder


@dataclass(frozen=True)
class Attempt:
    """One write to the revocation key: who, what, and whether Redis took it."""

    who: str
    what: str
    landed: bool
    answer: str = "ok"


async def _attempt(who: str, what: str, write: Callable[[], Awaitable[Any]]) -> Attempt:
    try:
        await write()
    except ResponseError as exc:  # an ACL's refusal has no prefix in a script's error
        text = str(exc)
        refused = "no permissions" in text or "can't run this command" in text
        answer = "NOPERM" if refused else text.split(" ", 1)[0]
        return Attempt(who, what, False, answer)
    return Attempt(who, what, True)


@dataclass(frozen=True)
class Means:
    """What the attack uses: the attacker's own Redis user, the admin's connection (the
    writer no ACL stops), the chain's key, the victim and its key, the forged entry."""

    mallory: aioredis.Redis
    admin: aioredis.Redis
    chain: str
    victim: str
    fingerprint: str
    forged: bytes


async def forge(m: Means) -> list[Attempt]:
    """Append the forged entry with the attacker's user, then (and an unsigned copy) with
    the admin's connection."""
    pushed = m.mallory.register_script("return redis.call('rpush', KEYS[1], ARGV[1])")
    entry = revocation_decoder.decode(m.forged)
    unsigned = msgspec.msgpack.encode(msgspec.structs.replace(entry, signature=b""))
    return [
        await _attempt(
            "attacker",
            f"RPUSH an entry revoking {m.victim}",
            lambda: m.mallory.rpush(m.chain, m.forged),
        ),
        await _attempt(
            "attacker",
            "RPUSH it from a Lua script",
            lambda: pushed(keys=[m.chain], args=[m.forged]),
        ),
        await _attempt("unfenced", "RPUSH it", lambda: m.admin.rpush(m.chain, m.forged)),
        await _attempt("unfenced", "RPUSH it unsigned", lambda: m.admin.rpush(m.chain, unsigned)),
    ]


async def erase(m: Means) -> list[Attempt]:
    """Rewrite the admin's entry, erase the chain, and put a hash revoking the victim there,
    all with the attacker's user."""
    forged = cast(str, m.forged)  # redis-py takes bytes too
    return [
        await _attempt(
            "attacker", "LSET the admin's entry", lambda: m.mallory.lset(m.chain, 0, forged)
        ),
        await _attempt(
            "attacker", "EXPIRE the chain (erased)", lambda: m.mallory.expire(m.chain, 0)
        ),
        await _attempt(
            "attacker",
            f"HSET a hash revoking {m.victim}",
            lambda: m.mallory.hset(m.chain, m.fingerprint, m.victim),
        ),
    ]
