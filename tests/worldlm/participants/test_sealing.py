"""Runs with ``sealing = "required"`` on the real broker: the weights equal an unsealed
run's (the simulator's), an outsider reading every topic finds no tensor and cannot open a
delta, a tampered chunk is dead-lettered with its reason, and the residual cache in Redis
holds ciphertext that only the linked federations open."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import msgspec
import pytest
import redis.asyncio as aioredis
import torch
from aiokafka import ConsumerRecord, TopicPartition

from brokers.deltas import DeltaReceiver, Received, Unreadable
from brokers.embedded import Servers
from brokers.kafka import KafkaSettings, PartitionReader, Producer
from brokers.state import RedisState
from schemas.codec import dead_letter_decoder, encode
from schemas.delta import Reassembler, chunk_hash, encode_delta
from schemas.keyspace import Keyspace
from schemas.messages import Envelope
from schemas.sealing import TAG_BYTES, SealError, Unsealer
from schemas.tensors import pack
from schemas.topics import Topics
from tests.worldlm.participants.helpers import raw_config, read_topic, settings
from worldlm.config.hierarchy import Hierarchy, parse
from worldlm.security.keys import generate_keys, load_keyring
from worldlm.participants.checkpoint import Checkpoint
from worldlm.participants.node import Endpoints, prepare_run
from worldlm.participants.runner import run_hierarchy
from worldlm.record.recording import metrics
from worldlm.lab.simulator import simulate


def sealed_tree(run_id: str) -> Hierarchy:
    """root -> eu -> en-0, de-0: client updates, broadcasts at two levels and a submission
    are all sealed (and signed). eu reads root's residual embedding (a link whose reads are
    ordered: root writes before it broadcasts, eu reads after training on that broadcast, so
    the live run reads what the simulator does), sealed to root and eu."""
    raw = raw_config(
        run_id,
        federations={"root": {}, "eu": {"parent": "root", "residual": {"links": ["root"]}}},
        clients={"en-0": ("eu", "lang-en"), "de-0": ("eu", "lang-de")},
        defaults={"schedule": {"deadline_s": 30.0}},
    )
    raw["run"] |= {"sealing": "required", "signing": "required"}
    return parse(raw)


async def records_of(kafka: KafkaSettings, topics: list[str]) -> list[ConsumerRecord]:
    """Every record of ``topics``, as an outsider with read access sees them."""
    found: list[ConsumerRecord] = []
    start = {TopicPartition(t, p): 0 for t in topics for p in range(kafka.partitions)}
    async with PartitionReader(kafka, start) as reader:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while loop.time() - last < 0.5:
            records = await reader.fetch(timeout_ms=100)
            if records:
                last = loop.time()
            found.extend(records)
    return found


async def test_a_sealed_run_equals_the_unsealed_one_and_an_outsider_reads_no_tensor(
    servers: Servers, run_id: str, tmp_path: Path
) -> None:
    h = sealed_tree(run_id)
    keys = tmp_path / "keys"
    generate_keys(keys, [*h.federations, *h.clients])
    ep = Endpoints(servers.kafka, servers.redis, str(keys))
    topics, kafka = Topics(run_id), settings(servers, h)
    await prepare_run(h, ep)

    # A genuine en-0 update to eu whose chunk 1 was changed on the way (hash recomputed).
    ring = load_keyring(keys, "en-0")
    delta = encode_delta(
        {"x": torch.arange(1000, dtype=torch.float32)},
        envelope=Envelope(run=run_id, sender="en-0", federation="eu"),
        kind="update",
        base_version=0,
        chunk_size=1000,
        signer=ring.signer,
        seal_to={"eu": ring.seal_public["eu"]},
    )
    chunk = delta.chunk(1)
    data = bytearray(chunk.data)
    data[7] ^= 0x01
    tampered = msgspec.structs.replace(chunk, data=memoryview(data), hash=chunk_hash(data))
    async with Producer(kafka) as producer:
        await producer.send(topics.up("eu"), encode(delta.manifest), key="eu")
        await producer.send(topics.up("eu"), encode(tampered), key="eu")

    async with asyncio.timeout(180):
        live = await run_hierarchy(h, ep, checkpoint_dir=tmp_path / "ckpt")
    simulated, sim = await asyncio.to_thread(simulate, h)

    for fid in h.federations:
        _, weights, _, _ = Checkpoint(tmp_path / "ckpt" / run_id / fid).load()
        expected = sim.weights(fid)
        for name in expected:
            assert torch.equal(weights[name], expected[name]), (fid, name)
    assert live.final_ppl() == simulated.final_ppl()

    letters = await read_topic(
        kafka, topics.dead_letter, dead_letter_decoder.decode, partitions=h.run.partitions
    )
    assert [(x.reason, x.envelope.sender) for x in letters] == [("tampered_chunk", "eu")]

    # An outsider reading every topic of the run: no window of the final model's bytes ...
    records = await records_of(kafka, [*topics.data_plane(h.federations), *topics.run_wide()])
    on_wire = b"".join(r.value or b"" for r in records)
    final = sim.weights("root")
    windows = [t.float().numpy().tobytes()[:32] for t in final.values() if t.numel() >= 8]
    plain = encode_delta(final, envelope=delta.manifest.envelope, kind="broadcast", base_version=0)
    plain_wire = b"".join(encode(m) for m in plain.messages())
    # The search would find them unsealed:
    assert len(windows) > 5 and all(w in plain_wire for w in windows)
    assert not any(w in on_wire for w in windows)
    # ... and no broadcast opens without a recipient's key.
    stranger = load_keyring(keys, "de-0").sealer  # a member of eu, not of root
    assert stranger is not None
    broadcasts = [r for r in records if r.topic == topics.down("root")]
    assert broadcasts
    for reader in (None, Unsealer("de-0", stranger)):
        receiver = DeltaReceiver(Reassembler(unsealer=reader))
        results = [receiver.feed(r) for r in broadcasts]
        assert not any(isinstance(x, Received) for x in results)
        reasons = {x.reason for x in results if isinstance(x, Unreadable)}
        assert reasons == ({"sealed"} if reader is None else {"not_a_recipient"})

    # eu read root's residual (sealed) and nothing went unread.
    reports = [m for m in await metrics(kafka, topics) if m.role == "aggregator"]
    eu = [m.values for m in reports if m.node == "eu"]
    assert max(v["residuals"] for v in eu) == 1.0
    assert all(v["residual_unreadable"] == 0.0 for v in eu)
    assert h.residual_readers("root") == ("eu",)

    # The residual cache as a plain Redis client sees it: no window of root's key layers ...
    residual_round, residual = sim.residuals["root"]
    _, packed = pack(residual)
    windows = [t.float().numpy().tobytes()[:32] for t in residual.values() if t.numel() >= 8]
    assert windows and all(w in packed for w in windows)
    ks = Keyspace(run_id)
    client = aioredis.from_url(servers.redis)
    try:
        manifest = cast(dict[bytes, bytes], await client.hgetall(ks.residual("root")))
        assert int(manifest[b"round"]) == residual_round and manifest[b"seal"]
        parts = [
            ks.residual_part("root", manifest[b"generation"].decode(), i)
            for i in range(int(manifest[b"parts"]))
        ]
        stored = b"".join(cast(list[bytes], await client.mget(parts)))
    finally:
        await client.aclose()
    assert len(stored) == len(packed) + TAG_BYTES
    everything = b"".join([stored, *manifest.values()])
    assert not any(w in everything for w in windows)
    # ... and only a linked federation's key opens it, to the simulator's tensors.
    async with RedisState(servers.redis, Keyspace(run_id)) as state:
        eu_key = load_keyring(keys, "eu").sealer
        assert eu_key is not None
        opened = await state.residuals.get("root", unsealer=Unsealer("eu", eu_key))
        assert opened is not None and opened.round == residual_round
        assert opened.tensors.keys() == residual.keys()
        assert all(torch.equal(opened.tensors[n], residual[n]) for n in residual)
        for reader, reason in ((None, "sealed"), (Unsealer("de-0", stranger), "not_a_recipient")):
            with pytest.raises(SealError) as refused:
                await state.residuals.get("root", unsealer=reader)
            assert refused.value.reason == reason
