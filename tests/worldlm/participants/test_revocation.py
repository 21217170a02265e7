"""Revocation and rotation while a signed run goes on, on the real servers: an update signed
with a revoked key is dead-lettered (``revoked``) and the round closes without it; after a
rotation the participant's updates under its new key are folded again. Only what the run's
admin key signed counts: a participant's own entries in the list are ignored and counted, a
client cannot revoke another federation's key with its Redis credentials, and erasing the
list revokes nothing back for an aggregator that had read it, restarted or not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
import tomli_w
import torch
from redis.exceptions import NoPermissionError
from typer.testing import CliRunner

from brokers.access import server_version
from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from brokers.revocations import Revocations
from brokers.state import RedisState
from schemas.codec import dead_letter_decoder, metrics_decoder
from schemas.delta import encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope
from schemas.revocation import ChainMemory, make_entry, revocation_decoder
from schemas.topics import Topics
from tests.worldlm.participants.helpers import flat_raw, poll, raw_config, read_topic, settings
from worldlm.security.acl import principal, principals
from worldlm.cli import app
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.security.credentials import (
    apply_redis_users,
    generate_passwords,
    read_password,
    with_credentials,
)
from worldlm.security.keys import generate_keys, load_keyring, public_fingerprint
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.training.workbench import initial_weights

runner = CliRunner()


async def send_zero(producer: Producer, h: Hierarchy, keys: Path, sender: str, base: int) -> None:
    """Publish an all-zero update of ``sender`` to the root, signed with its key on disk now
    (the test plays the clients: no heartbeats, so a round closes on its first update)."""
    zero = {n: torch.zeros_like(w) for n, w in initial_weights(h.run).items()}
    delta = encode_delta(
        zero,
        envelope=Envelope(run=h.run.id, sender=sender, federation="root"),
        kind="update",
        base_version=base,
        sample_count=8,
        signer=load_keyring(keys, sender).signer,
    )
    await publish_delta(producer, Topics(h.run.id).up("root"), "root", delta)


async def signing_run(
    servers: Servers, run_id: str, tmp_path: Path
) -> tuple[dict[str, Any], Hierarchy, Path, Endpoints]:
    """A flat 3-round signing run's config, keys (admin's included) and prepared topics."""
    raw = flat_raw(run_id, rounds=3)
    raw["run"]["signing"] = "required"
    h = parse(raw)
    keys = tmp_path / "keys"
    generate_keys(keys, [*h.federations, *h.clients])
    ep = Endpoints(servers.kafka, servers.redis, str(keys))
    await prepare_run(h, ep)
    return raw, h, keys, ep


async def test_a_revoked_key_is_refused_from_the_next_round_and_a_rotated_one_counts(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    raw, h, keys, ep = await signing_run(servers, run_id, tmp_path)
    topics, kafka = Topics(run_id), settings(servers, h)

    async def send(producer: Producer, sender: str, base: int) -> None:
        await send_zero(producer, h, keys, sender, base)

    aggregator = AggregatorParticipant(h, ep, "root", checkpoint_dir=tmp_path / "ckpt")
    async with (
        asyncio.timeout(120),
        RedisState(servers.redis, Keyspace(run_id)) as state,
        Producer(kafka) as producer,
    ):
        run = asyncio.create_task(aggregator.run())

        async def version(v: int) -> bool:
            pointer = await state.model_version("root")
            return pointer is not None and pointer.version >= v

        await poll(lambda: version(0))
        await send(producer, "de-0", 0)  # round 0: folded
        await poll(lambda: version(1))
        old = public_fingerprint(keys, "de-0")
        config = tmp_path / "run.toml"
        config.write_text(tomli_w.dumps(raw))
        cli = ["keys", "revoke", "--config", str(config), "--keys", str(keys), "--id", "de-0"]
        result = await asyncio.to_thread(runner.invoke, app, [*cli, "--redis", servers.redis])
        assert result.exit_code == 0 and "revoked" in result.output, result.output
        await send(producer, "de-0", 1)  # round 1: refused, revoked
        await send(producer, "en-0", 1)  # round 1: folded
        await poll(lambda: version(2))
        cli[1] = "rotate"
        result = await asyncio.to_thread(runner.invoke, app, [*cli, "--redis", servers.redis])
        assert result.exit_code == 0, result.output
        assert public_fingerprint(keys, "de-0") != old
        admin = load_keyring(keys, "root").admin  # the admin's public key, as readers have it
        assert await Revocations(state, admin).revoked() == {old: "de-0"}
        await send(producer, "de-0", 2)  # round 2: its new key, folded
        await run

    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert [(x.reason, x.envelope.sender) for x in letters] == [("revoked", "root")]
    assert "revoked" in letters[0].detail and "de-0" in letters[0].detail
    assert aggregator.core.counters["rejected_revoked"] == 1
    reports = await read_topic(
        kafka, topics.metrics, metrics_decoder.decode, partitions=h.run.partitions
    )
    root = {r.round: r.values for r in reports if r.node == "root"}
    assert sorted(root) == [0, 1, 2]
    assert [root[r]["arrived"] for r in (0, 1, 2)] == [1.0, 1.0, 1.0]
    assert root[0]["rejected"] == 0 and root[1]["rejected"] == 1
    assert aggregator.node.keys is not None and aggregator.node.keys.reloads == 1


async def test_forged_revocations_are_ignored_and_erasing_the_list_restores_no_key(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    raw, h, keys, ep = await signing_run(servers, run_id, tmp_path)
    topics, kafka = Topics(run_id), settings(servers, h)
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(raw))
    victim = public_fingerprint(keys, "de-0")
    # en-0 forges de-0's revocation with what it has: the run's Redis (no ACLs here) and
    # its own signing key; unsigned, and the admin's genuine entry replayed out of place.
    mallory = load_keyring(keys, "en-0").signer
    assert mallory is not None
    forged = make_entry(run_id, ChainMemory(), victim, "de-0", "revoke", mallory)
    unsigned = msgspec.msgpack.encode(
        msgspec.structs.replace(revocation_decoder.decode(forged), signature=b"")
    )
    checkpoints = tmp_path / "ckpt"
    first = AggregatorParticipant(h, ep, "root", checkpoint_dir=checkpoints)
    async with (
        asyncio.timeout(120),
        RedisState(servers.redis, Keyspace(run_id)) as state,
        Producer(kafka) as producer,
    ):
        chain = state.keyspace.revoked_keys()

        async def version(v: int) -> bool:
            pointer = await state.model_version("root")
            return pointer is not None and pointer.version >= v

        run = asyncio.create_task(first.run())
        await poll(lambda: version(0))
        await state.redis.rpush(chain, forged, unsigned)
        await send_zero(producer, h, keys, "de-0", 0)  # round 0: folded, the forgery ignored
        await poll(lambda: version(1))
        assert first.node.counters["revocations_ignored"] == 2
        cli = ["keys", "revoke", "--config", str(config), "--keys", str(keys), "--id", "de-0"]
        result = await asyncio.to_thread(runner.invoke, app, [*cli, "--redis", servers.redis])
        assert result.exit_code == 0 and "revoked" in result.output, result.output
        await state.redis.rpush(chain, (await state.redis.lrange(chain, 2, 2))[0])  # replayed
        await send_zero(producer, h, keys, "de-0", 1)  # round 1: refused, the admin revoked
        await send_zero(producer, h, keys, "en-0", 1)
        await poll(lambda: version(2))
        assert first.node.counters["revocations_ignored"] == 3
        first.stop.set()
        await run
        # The list is erased; the aggregator restarts from its checkpoint, which remembers.
        await state.redis.delete(chain)
        second = AggregatorParticipant(h, ep, "root", checkpoint_dir=checkpoints)
        run = asyncio.create_task(second.run())
        await send_zero(producer, h, keys, "de-0", 2)  # round 2: refused still
        await send_zero(producer, h, keys, "en-0", 2)
        await run

    assert second.core.meta.final and second.node.counters["revocations_tampered"] == 1
    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert [(x.reason, x.envelope.sender) for x in letters] == [("revoked", "root")] * 2
    reports = await read_topic(
        kafka, topics.metrics, metrics_decoder.decode, partitions=h.run.partitions
    )
    root = {r.round: r.values for r in reports if r.node == "root"}
    assert [(root[r]["arrived"], root[r]["rejected"]) for r in (0, 1, 2)] == [
        (1.0, 0.0),
        (1.0, 1.0),
        (1.0, 2.0),  # the core's counters are restored with its checkpoint
    ]
    assert root[0]["revocations_ignored"] == 2 and root[2]["revocations_tampered"] == 1


async def test_a_client_cannot_revoke_another_federations_key_with_its_redis_credentials(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    """The outside probe: under isolation = "acl" a client of latin writes slavic's and
    ru-0's keys into the revocation key with its own Redis user; the run must still finish,
    with slavic's updates folded and ru-0 taking slavic's broadcasts."""
    raw = raw_config(
        run_id,
        federations={"root": {}, "latin": {"parent": "root"}, "slavic": {"parent": "root"}},
        clients={"fr-0": ("latin", "lang-fr"), "ru-0": ("slavic", "lang-ru")},
        rounds=1,
    )
    raw["run"] |= {"isolation": "acl", "signing": "required"}
    h = parse(raw)
    generate_keys(tmp_path, [*h.federations, *h.clients])
    generate_passwords(tmp_path, principals(h))
    await apply_redis_users(h, servers.redis, str(tmp_path))
    chain = Keyspace(run_id).revoked_keys()
    login = with_credentials(
        servers.redis, principal(run_id, "fr-0"), read_password(tmp_path, "fr-0")
    )
    read_only = await server_version(servers.redis) >= (7,)  # Valkey, the default: %R~
    refused = 0
    async with RedisState(login, Keyspace(run_id), retries=0) as fr:
        for victim in ("slavic", "ru-0"):
            try:
                await fr.redis.hset(chain, public_fingerprint(tmp_path, victim), victim)
            except NoPermissionError:
                refused += 1
        with pytest.raises(NoPermissionError):  # appending is the admin's: no RPUSH
            await fr.redis.rpush(chain, b"revoke slavic")
    async with asyncio.timeout(120):
        result = await run_hierarchy(h, Endpoints(servers.kafka, servers.redis, str(tmp_path)))

    assert set(result.final_ppl()) == {"fr-0", "ru-0"}
    root = [r.values for r in result.reports if r.node == "root"]
    assert root and root[-1]["rejected"] == 0
    # Redis 7 / Valkey refuse the client's HSET (a read-only pattern); on Redis 6 it lands
    # (no read-only patterns there): every reader sees a value that is no chain, reports
    # it, and revokes nothing.
    assert refused == (2 if read_only else 0)
    assert root[-1]["revocations_tampered"] == (0 if read_only else 1)
