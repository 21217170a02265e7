"""A LoRA run on a pretrained base, live on the embedded Kafka and Redis and on the simulator:
both end at the same adapters bit for bit, and only adapters ever travel."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import msgspec
import pytest
import torch
from aiokafka import TopicPartition

from brokers.embedded import Servers
from brokers.kafka import KafkaSettings, PartitionReader
from schemas.codec import delta_decoder
from schemas.errors import WireError
from schemas.messages import DeltaManifest
from schemas.topics import Topics
from tests.worldlm.lab.test_simulator import three_levels
from tests.worldlm.participants.helpers import endpoints
from tests.worldlm.training.bases import LORA, make_base
from worldlm.config.hierarchy import Hierarchy
from worldlm.lab.simulator import simulate
from worldlm.lab.studies.exchange import exchange_bytes
from worldlm.participants.checkpoint import Checkpoint
from worldlm.participants.runner import run_hierarchy


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("base"))


def lora_tree(run_id: str, base: Path) -> Hierarchy:
    """The simulator test's three-level tree, on ``base``, training rank-4 adapters (latin
    scales its own by alpha 16)."""
    h = three_levels(run_id, tables={"latin": {"lora": {**LORA, "alpha": 16}}}, lora=LORA)
    return dataclasses.replace(h, run=msgspec.structs.replace(h.run, init=str(base)))


async def test_a_live_lora_run_ends_at_the_simulators_adapters_bit_for_bit(
    servers: Servers, run_id: str, tmp_path: Path, base: Path
) -> None:
    h = lora_tree(run_id, base)
    assert h.run.lora is not None and h.federations["latin"].policy.lora.alpha == 16  # type: ignore[union-attr]
    async with asyncio.timeout(240):
        live = await run_hierarchy(h, endpoints(servers), checkpoint_dir=tmp_path / "ckpt")
    simulated, sim = await asyncio.to_thread(simulate, h)

    for fid in h.federations:
        _, weights, _, _ = Checkpoint(tmp_path / "ckpt" / run_id / fid).load()
        expected = sim.weights(fid)
        assert weights.keys() == expected.keys()
        assert all(".lora_" in n for n in weights)  # checkpoints hold adapters only
        for name in expected:
            assert torch.equal(weights[name], expected[name]), (fid, name)
    assert live.final_ppl() == simulated.final_ppl()
    # The adapters moved (lora_B starts at zero) and the base was pretrained, not random.
    root = sim.weights("root")
    assert any(root[n].abs().sum() > 0 for n in root if ".lora_B." in n)

    # Every update and broadcast on the wire names adapters only; submissions carry no K.
    kafka = KafkaSettings(bootstrap=servers.kafka, partitions=h.run.partitions)
    topics = Topics(run_id)
    names: dict[tuple[str, str], set[str]] = {}  # (topic, sender) -> tensor names
    wire = 0
    for topic in topics.data_plane(h.federations):
        start = {TopicPartition(topic, p): 0 for p in range(h.run.partitions)}
        async with PartitionReader(kafka, start) as reader:
            for _ in range(10):
                for record in await reader.fetch(timeout_ms=200):
                    wire += len(record.value or b"")
                    try:
                        message = delta_decoder.decode(record.value or b"")
                    except WireError:
                        continue
                    if isinstance(message, DeltaManifest):
                        sender = message.envelope.sender
                        sent = names.setdefault((topic, sender), set())
                        sent.update(t.name for t in message.tensors)
    assert len(names) >= 8  # updates and broadcasts of every level
    assert all(".lora_" in n for sent in names.values() for n in sent)
    key, up = sim.cores["latin"].key, topics.up(h.root.id)
    assert key and not (names[(up, "latin")] | names[(up, "slavic")]) & key  # B only, upward
    assert names[(topics.up("latin"), "fr-0")] >= key  # a client's update: every adapter

    # Bytes per exchange against the whole model (same records, float32).
    sizes = exchange_bytes(h, "latin")
    assert sizes["client_update"] * 20 < sizes["full_client_update"]
    assert sizes["submission"] < sizes["client_update"]
    assert wire > 0
