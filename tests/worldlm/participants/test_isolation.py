"""Runs with ``isolation = "acl"`` on the real redis-server: every participant logs in as its
own Redis user, which reaches its own federation's keys and is refused (NOPERM) a sibling's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import tomli_w
from redis.exceptions import AuthenticationError, NoPermissionError
from typer.testing import CliRunner

from brokers.embedded import Servers
from brokers.state import RedisState
from schemas.keyspace import Keyspace
from tests.worldlm.participants.helpers import raw_config
from worldlm.security.acl import principal, principals
from worldlm.cli import app
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.security.credentials import (
    apply_redis_users,
    generate_passwords,
    read_password,
    with_credentials,
)
from worldlm.security.keys import generate_keys
from worldlm.participants.node import Endpoints
from worldlm.participants.runner import run_hierarchy

FEDERATIONS = {"root": {}, "latin": {"parent": "root"}, "slavic": {"parent": "root"}}
CLIENTS = {"fr-0": ("latin", "lang-fr"), "ru-0": ("slavic", "lang-ru")}


def isolated(run_id: str, **run: Any) -> Hierarchy:
    raw = raw_config(run_id, federations=FEDERATIONS, clients=CLIENTS, rounds=1)
    raw["run"] |= {"isolation": "acl", **run}
    return parse(raw)


def login(servers: Servers, h: Hierarchy, keys: Path, node: str) -> RedisState:
    url = with_credentials(servers.redis, principal(h.run.id, node), read_password(keys, node))
    return RedisState(url, Keyspace(h.run.id), ttl_s=600, retries=0)


async def denials(servers: Servers, run_id: str) -> list[dict[str, Any]]:
    """The server's ACL log entries of this run's users (key and command refusals)."""
    admin = aioredis.Redis.from_url(servers.redis, decode_responses=True)
    try:
        entries = await admin.acl_log()
    finally:
        await admin.aclose()
    return [e for e in entries if str(e["username"]).startswith(f"{run_id}.")]


async def test_a_client_is_refused_another_federations_keys(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = isolated(run_id)
    generate_passwords(tmp_path, principals(h))
    assert await apply_redis_users(h, servers.redis, str(tmp_path)) == len(principals(h))

    async with login(servers, h, tmp_path, "fr-0") as fr:
        assert await fr.heartbeat("latin", "fr-0", ttl_s=30)  # its own federation: allowed
        with pytest.raises(NoPermissionError):
            await fr.heartbeat("slavic", "fr-0", ttl_s=30)
        with pytest.raises(NoPermissionError):
            await fr.model_version("slavic")
        with pytest.raises(NoPermissionError):
            await fr.redis.hgetall(Keyspace(run_id).staleness("slavic"))
        with pytest.raises(NoPermissionError):  # a client is no aggregator of its own either
            await fr.lead("latin", "fr-0", ttl_s=30)
        with pytest.raises(NoPermissionError):  # nor may it list or wipe the server
            await fr.redis.keys("*")
        with pytest.raises(NoPermissionError):
            await fr.redis.flushall()

    async with login(servers, h, tmp_path, "latin") as latin:
        assert await latin.lead("latin", "t", ttl_s=30)
        assert await latin.heartbeat("root", "latin", ttl_s=30)  # its parent's membership
        assert await latin.residuals.get("slavic") is None  # a sibling link: readable
        with pytest.raises(NoPermissionError):
            await latin.lead("slavic", "t", ttl_s=30)
        with pytest.raises(NoPermissionError):
            await latin.arrive("slavic", 0, "ru-0", quorum=1)
        with pytest.raises(NoPermissionError):
            await latin.roster("slavic")

    wrong = with_credentials(servers.redis, principal(run_id, "fr-0"), "not-the-password")
    with pytest.raises(AuthenticationError):
        async with RedisState(wrong, Keyspace(run_id), retries=0):
            pass
    refused = await denials(servers, run_id)
    assert {e["username"] for e in refused} == {f"{run_id}.fr-0", f"{run_id}.latin"}


async def test_a_run_that_isolates_federations_completes_without_a_refusal(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = isolated(run_id, signing="required")  # signed: the revocation list is read too
    generate_keys(tmp_path, [*h.federations, *h.clients])
    ep = Endpoints(servers.kafka, servers.redis, key_dir=str(tmp_path))
    async with asyncio.timeout(120):
        result = await run_hierarchy(h, ep)

    assert set(result.final_ppl()) == {"fr-0", "ru-0"}
    assert (tmp_path / "fr-0.redis").stat().st_mode & 0o777 == 0o600
    # Every participant spoke as its own user, and none was refused anything it needed
    # (redis-py's CLIENT SETINFO at connect is refused and ignored: not a need).
    refused = [e for e in await denials(servers, run_id) if e["object"] != "client"]
    assert refused == []
    admin = aioredis.Redis.from_url(servers.redis, decode_responses=True)
    try:
        users = await admin.acl_users()
    finally:
        await admin.aclose()
    assert {principal(run_id, p) for p in principals(h)} <= set(users)


async def test_a_participant_logs_in_as_itself_and_needs_its_password(
    run_id: str, tmp_path: Path
) -> None:
    from worldlm.security.keys import KeyFileError
    from worldlm.participants.client import ClientParticipant

    h = isolated(run_id)
    with pytest.raises(KeyFileError, match="--keys"):
        ClientParticipant(h, Endpoints("k:1", "redis://r:1/0"), "fr-0")
    with pytest.raises(KeyFileError, match=r"fr-0\.redis"):
        ClientParticipant(h, Endpoints("k:1", "redis://r:1/0", str(tmp_path)), "fr-0")
    generate_passwords(tmp_path, ["fr-0"])
    client = ClientParticipant(h, Endpoints("k:1", "redis://r:1/0", str(tmp_path)), "fr-0")
    password = read_password(tmp_path, "fr-0")
    assert client.node.state.url == f"redis://{run_id}.fr-0:{password}@r:1/0"


def test_acl_command_prints_hashes_and_applies_the_users(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    raw = raw_config(run_id, federations=FEDERATIONS, clients=CLIENTS)
    raw["run"]["isolation"] = "acl"
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(raw))
    keys = tmp_path / "keys"
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "generate", "--config", str(config), "--out", str(keys)])
    assert made.exit_code == 0, made.output
    assert "6 Redis passwords written" in made.output

    printed = runner.invoke(app, ["acl", str(config), "--format", "redis", "--keys", str(keys)])
    assert printed.exit_code == 0, printed.output
    lines = printed.output.splitlines()
    assert len(lines) == 6 and all(line.startswith("ACL SETUSER ") for line in lines)
    assert read_password(keys, "fr-0") not in printed.output

    applied = runner.invoke(
        app, ["acl", str(config), "--keys", str(keys), "--redis", servers.redis, "--apply"]
    )
    assert applied.exit_code == 0, applied.output
    assert f"6 Redis users set for run {run_id}" in applied.output

    kafka = runner.invoke(app, ["acl", str(config), "--kafka", "b:9092"])
    assert kafka.exit_code == 0 and f"User:{run_id}.fr-0" in kafka.output
