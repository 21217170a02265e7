"""Revocation and rotation while a signed run goes on, on the real servers: an update signed
with a revoked key is dead-lettered (``revoked``) and the round closes without it; after a
rotation the participant's updates under its new key are folded again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tomli_w
import torch
from typer.testing import CliRunner

from brokers.deltas import publish_delta
from brokers.embedded import Servers
from brokers.kafka import Producer
from brokers.revocations import Revocations
from brokers.state import RedisState
from schemas.codec import dead_letter_decoder, metrics_decoder
from schemas.delta import encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope
from schemas.topics import Topics
from tests.worldlm.participants.helpers import flat_raw, poll, read_topic, settings
from worldlm.cli import app
from worldlm.config import parse
from worldlm.keys import generate_keys, load_keyring, public_fingerprint
from worldlm.participants.aggregator import AggregatorParticipant
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.training.workbench import initial_weights

runner = CliRunner()


async def test_a_revoked_key_is_refused_from_the_next_round_and_a_rotated_one_counts(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    raw = flat_raw(run_id, rounds=3)
    raw["run"]["signing"] = "required"
    h = parse(raw)
    keys = tmp_path / "keys"
    generate_keys(keys, [*h.federations, *h.clients])
    ep = Endpoints(servers.kafka, servers.redis, str(keys))
    topics, kafka = Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)
    zero = {n: torch.zeros_like(w) for n, w in initial_weights(h.run).items()}

    # The test plays both clients (no heartbeats: a round closes on its first update).
    async def send(producer: Producer, sender: str, base: int) -> None:
        delta = encode_delta(
            zero,
            envelope=Envelope(run=run_id, sender=sender, federation="root"),
            kind="update",
            base_version=base,
            sample_count=8,
            signer=load_keyring(keys, sender).signer,  # the key on disk now
        )
        await publish_delta(producer, topics.up("root"), "root", delta)

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
        assert await Revocations(state).revoked() == {old: "de-0"}
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
