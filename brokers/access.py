"""Redis ACL users, set through an admin connection (``ACL SETUSER``).

The rules themselves are the caller's (:mod:`worldlm.security.acl` derives them from a hierarchy);
this module only speaks to the server. Setting a user replaces its rules when they start
with ``reset``, so applying the same users twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


class AccessError(RuntimeError):
    """The server refused an ACL change (not an admin connection, or a bad rule)."""


async def server_version(url: str) -> tuple[int, ...]:
    """The Redis server's version, e.g. ``(7, 2, 4)``."""
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return tuple(int(part) for part in str(info["redis_version"]).split(".") if part.isdigit())


async def set_users(url: str, users: Mapping[str, Sequence[str]]) -> None:
    """``ACL SETUSER name *rules`` for every user, over one connection to ``url``."""
    client = aioredis.Redis.from_url(url)
    try:
        for name, rules in users.items():
            try:
                await client.execute_command("ACL", "SETUSER", name, *rules)
            except ResponseError as exc:
                raise AccessError(f"cannot set Redis user {name!r}: {exc}") from exc
    finally:
        await client.aclose()
